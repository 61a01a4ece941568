"""Issue 19 through the DAG: kill -9 of Snakemake's process group in the middle of rag_finetune leaves no trainer;
`snakemake --unlock` and a re-run resume from the last periodic checkpoint and end where an uninterrupted run does.

    python -m pytest -q tests/workflow/test_crash_resume.py
"""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml

from wfhelpers import ROOT, TINY, copy_workflow, snakemake

TARGET = "results/runs/tiny_rag/eval/metrics.json"
CKPT = "results/checkpoints/rag_checkpoints/tiny_rag"
TIMING = {"generation_seconds"}


def config_for_kill() -> dict:
    """The tiny config's rag run, long enough (240 steps, a checkpoint every 20) to be killed in the middle."""
    cfg = yaml.safe_load((ROOT / TINY).read_text())
    cfg["runs"] = {"tiny_rag": cfg["runs"]["tiny_rag"]}
    cfg["runs"]["tiny_rag"]["train"].update(num_epochs=50, max_steps=240, save_every=20, keep_last=2)
    return cfg


def complete_steps(work) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (work / CKPT).glob("meta_*.json"))


def trainers(work) -> list[psutil.Process]:
    """Live processes running a fine-tune in this copy of the workflow."""
    found = []
    for p in psutil.process_iter(["cmdline", "cwd", "status"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["cwd"] == str(work) and "finetune" in cmd and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p)
    return found


def losses(work) -> list[tuple[int, float]]:
    with open(work / CKPT / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def metrics(work) -> dict:
    return {k: v for k, v in json.loads((work / TARGET).read_text()).items() if k not in TIMING}


@pytest.mark.slow
def test_kill_9_mid_training_then_unlock_and_rerun_resumes_to_the_same_result(tmp_path):
    args = ["--cores", "2", TARGET, "--configfile", "kill.yaml", "--replace-workflow-config"]
    whole, killed = copy_workflow(tmp_path / "whole"), copy_workflow(tmp_path / "killed")
    for work in (whole, killed):
        (work / "kill.yaml").write_text(yaml.safe_dump(config_for_kill()))
    snakemake(whole, *args)

    proc = subprocess.Popen([sys.executable, "-m", "snakemake", *args], cwd=killed, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and not [s for s in complete_steps(killed) if s >= 60]:
        assert proc.poll() is None, "snakemake ended before training reached step 60"
        time.sleep(0.05)
    assert not (killed / CKPT / "done.json").exists(), "training finished before the kill: make it longer"
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake's whole process group, as a user's `kill -9 -PGID`
    proc.wait()
    t0 = time.time()
    while trainers(killed) and time.time() - t0 < 20:
        time.sleep(0.1)
    assert not trainers(killed), "a trainer outlived the killed workflow"
    print(f"no trainer alive {time.time() - t0:.1f} s after the kill; checkpoints {complete_steps(killed)}")
    assert not (killed / CKPT / "done.json").exists()  # the stopped trainer did not finish the run behind our back
    last = complete_steps(killed)[-1]

    locked = snakemake(killed, *args, check=False)  # Snakemake's own lock survives a hard kill ...
    assert locked.returncode != 0 and "cannot be locked" in locked.stdout
    snakemake(killed, "--unlock")  # ... the README's remedy
    snakemake(killed, *args)
    log = (killed / "logs/rag_finetune/tiny_rag.log").read_text()
    resumed = [int(m) for m in re.findall(r"resumed from step (\d+)", log)]
    assert resumed and resumed[-1] == last and last > 0, log[-3000:]
    assert losses(killed) == losses(whole) and losses(whole)[-1][0] == 240
    assert metrics(killed) == metrics(whole)
    assert len(complete_steps(killed)) == 2  # keep_last
