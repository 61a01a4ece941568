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
    cfg["runs"]["tiny_rag"]["train"].update(num_epochs=200, max_steps=240, save_every=20, keep_last=2)
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


def start(work, args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "snakemake", *args], cwd=work, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_at(work, proc: subprocess.Popen, step: int, power_loss: bool = False) -> float:
    """SIGKILL Snakemake's process group once a checkpoint of `step` or later exists; with power_loss the
    trainers too, at the same instant (no chance to checkpoint). Returns the seconds until no trainer was left."""
    deadline = time.time() + 600
    while time.time() < deadline and not [s for s in complete_steps(work) if s >= step]:
        assert proc.poll() is None, f"snakemake ended before training reached step {step}"
        time.sleep(0.05)
    assert not (work / CKPT / "done.json").exists(), "training finished before the kill: make it longer"
    for p in trainers(work) if power_loss else []:
        p.kill()  # first, so that no parent-death signal gives it time to checkpoint
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake's whole process group, as a user's `kill -9 -PGID`
    proc.wait()
    t0 = time.time()
    while trainers(work) and time.time() - t0 < 20:
        time.sleep(0.1)
    assert not trainers(work), "a trainer outlived the killed workflow"
    assert not (work / CKPT / "done.json").exists()  # the stopped trainer did not finish the run behind our back
    return time.time() - t0


def resumed_from(work) -> int:
    log = (work / "logs/rag_finetune/tiny_rag.log").read_text()
    found = re.findall(r"resumed from step (\d+)", log)
    assert found, log[-3000:]
    return int(found[-1])


@pytest.mark.slow
def test_kill_9_mid_training_then_unlock_and_rerun_resumes_to_the_same_result(tmp_path):
    args = ["--cores", "2", TARGET, "--configfile", "kill.yaml", "--replace-workflow-config"]
    whole, killed = copy_workflow(tmp_path / "whole"), copy_workflow(tmp_path / "killed")
    for work in (whole, killed):
        (work / "kill.yaml").write_text(yaml.safe_dump(config_for_kill()))
    snakemake(whole, *args)

    # 1. kill -9 of Snakemake's group: the orphaned worker gets SIGTERM from the kernel, checkpoints and stops
    seconds = kill_at(killed, start(killed, args), 60)
    last = complete_steps(killed)[-1]
    assert last > 60  # the checkpoint the orphaned worker wrote on its way out
    print(f"no trainer alive {seconds:.1f} s after the kill; checkpoints {complete_steps(killed)}")
    locked = snakemake(killed, *args, check=False)  # Snakemake's own lock survives a hard kill ...
    assert locked.returncode != 0 and "cannot be locked" in locked.stdout
    snakemake(killed, "--unlock")  # ... the README's remedy
    # 2. the re-run resumes there; a power loss during it (trainer killed too) leaves the periodic checkpoints
    kill_at(killed, start(killed, args), last + 60, power_loss=True)
    assert resumed_from(killed) == last > 0
    periodic = complete_steps(killed)[-1]
    assert periodic % 20 == 0 and periodic > last
    snakemake(killed, "--unlock")
    # 3. the last re-run resumes from the newest periodic checkpoint and ends where the uninterrupted run did
    snakemake(killed, *args)
    assert resumed_from(killed) == periodic
    assert losses(killed) == losses(whole) and losses(whole)[-1][0] == 240
    assert metrics(killed) == metrics(whole)
    assert len(complete_steps(killed)) == 2  # keep_last
