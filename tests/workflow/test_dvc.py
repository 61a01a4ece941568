"""dvc.yaml: generated from the Snakemake DAG (parity), reproducible, push/pull round trip, offline plots.

    python -m pytest -q tests/workflow/test_dvc.py
"""
import ast
import hashlib
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from nanochat.pipeline.dvc import dvc_stages, stage_params
from wfhelpers import ROOT, TINY, copy_workflow, dry_run, snakemake


def run(cwd, *cmd, timeout=600):
    proc = subprocess.run(list(map(str, cmd)), cwd=cwd, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-5000:]}"
    return proc.stdout


def digest(paths):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(paths) if p.is_file()}


def test_committed_dvc_yaml_matches_generator():
    proc = subprocess.run([sys.executable, "-m", "nanochat.pipeline", "dvc", "--check"], cwd=ROOT, text=True,
                          capture_output=True)
    assert proc.returncode == 0, proc.stderr[-5000:]
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ["documents", "knowledge_base", "model", "retrieval", "dataset", "train", "evaluate",
                            "report"]
    for name, st in stages.items():
        assert st["cmd"].startswith("snakemake ") and "--allowed-rules" in st["cmd"], name
        assert any(d.startswith("rules/") for d in st["deps"]), f"{name}: rule file not a dependency"
    assert "results/kb/synthetic/bm25" in stages["knowledge_base"]["outs"]
    assert "results/checkpoints/rag_checkpoints/synthetic_rag" in stages["train"]["outs"]
    assert stages["evaluate"]["metrics"] == ["results/runs/synthetic_rag/eval/metrics.json",
                                             "results/runs/synthetic_refrag/eval/metrics.json"]


def test_stage_params_are_declared_in_the_rule_files():
    """dvc.yaml's params of each stage are the reads_config(...) line of its rule file, and nothing else."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, st in stages.items():
        lines = re.findall(r"^reads_config\((.*)\)", (ROOT / "rules" / f"{name}.smk").read_text(), re.M)
        assert len(lines) == 1, f"rules/{name}.smk: one reads_config(...) line expected, found {lines}"
        declared = list(ast.literal_eval(f"({lines[0].split('#')[0]},)")) if lines[0].strip() else []
        assert [p["config/config.yaml"] for p in st.get("params", [])] == ([declared] if declared else []), name


def test_stage_params_checks(tmp_path):
    jobs = [{"rule": "a", "stage": "first", "rule_file": "rules/first.smk", "script": None, "input": [],
             "output": ["out/a.txt"], "params": {}},
            {"rule": "b", "stage": "second", "rule_file": "rules/second.smk", "script": None, "input": ["out/a.txt"],
             "output": ["out/b.txt"], "params": {}}]
    config = {"runs": {"r": {"top_k": 3}}, "device": "cpu", "base_dir": "ck"}
    with pytest.raises(ValueError, match=r"rules/second.smk: no reads_config"):
        stage_params({"first": ["runs"]}, config, jobs)
    with pytest.raises(ValueError, match=r"rules/first.smk: reads_config\('runs.r.top_p'\): no such config key"):
        stage_params({"first": ["runs.r.top_p"], "second": []}, config, jobs)
    declared = stage_params({"second": ["device", "base_dir"], "first": ["runs.r.top_k"]}, config, jobs)
    # stages in declaration (include) order; a key filled by the schema's default is not in the file: not a param
    (tmp_path / "c.yaml").write_text("runs: {r: {top_k: 3}}\ndevice: cpu\n")
    stages = dvc_stages(jobs, declared, "c.yaml", workdir=tmp_path)
    assert list(stages) == ["second", "first"]
    assert stages["second"]["params"] == [{"c.yaml": ["device"]}]
    assert stages["first"]["params"] == [{"c.yaml": ["runs.r.top_k"]}]


def dvc_outputs(work):
    """Every file DVC tracks as a stage output or metric, per the generated dvc.yaml."""
    stages = yaml.safe_load((work / "dvc.yaml").read_text())["stages"]
    files = set()
    for st in stages.values():
        for out in st.get("outs", []) + st.get("metrics", []):
            out = work / (out if isinstance(out, str) else next(iter(out)))
            files |= set(out.rglob("*")) if out.is_dir() else {out}
    return stages, {p for p in files if p.is_file()}


@pytest.mark.slow
def test_dvc_repro_push_pull_round_trip(tmp_path):
    """Whole pipeline: repro on a fresh copy, no-op second repro, push/pull restores every output, Snakemake agrees."""
    work = copy_workflow(tmp_path / "work")
    run(work, sys.executable, "-m", "nanochat.pipeline", "dvc", "--configfile", TINY)
    run(work, "dvc", "init", "--no-scm", "-q")
    run(work, "dvc", "repro")  # every stage, documents -> report, each through Snakemake
    stages, outs = dvc_outputs(work)
    rel = {str(p.relative_to(work)) for p in outs}
    for must in ("results/kb/tiny/bm25/manifest.json", "results/report/metrics.csv",
                 "results/runs/tiny_rag/eval/metrics.json", "results/runs/tiny_refrag/eval/metrics.json"):
        assert must in rel, f"{must} not a DVC output: {sorted(rel)}"
    for ckpt in ("results/checkpoints/rag_checkpoints/tiny_rag", "results/checkpoints/refrag_checkpoints/tiny_refrag"):
        assert any(r.startswith(ckpt + "/") and r.endswith(".pt") for r in rel), f"no checkpoint file under {ckpt}"
    before = digest(outs)

    again = run(work, "dvc", "repro")
    assert "Running stage" not in again, again[-3000:]
    for name in stages:
        assert f"Stage '{name}' didn't change" in again, f"{name} re-ran:\n{again[-3000:]}"

    run(work, "dvc", "remote", "add", "-d", "local", tmp_path / "remote")
    run(work, "dvc", "push")
    # A fresh clone: no results (KB dirs, checkpoints, metrics), no DVC cache, no Snakemake metadata.
    for gone in ("results", ".dvc/cache", ".snakemake"):
        shutil.rmtree(work / gone, ignore_errors=True)
    assert not any(p.exists() for p in outs)
    run(work, "dvc", "pull")
    assert digest(outs) == before  # byte-identical, every file
    assert "Data and pipelines are up to date" in run(work, "dvc", "status")

    # Restored files get fresh mtimes; --touch makes Snakemake accept them without re-running anything.
    tiny = ("--configfile", TINY, "--replace-workflow-config")
    snakemake(work, "--touch", "--cores", "1", *tiny)
    assert dry_run(work, *tiny) == {}  # nothing to do: in particular no rag_finetune/refrag_finetune
    assert digest(outs) == before
    # ...and the dry run is not vacuous: without the checkpoint's marker (and the metrics it feeds) it retrains.
    for lost in ("results/checkpoints/rag_checkpoints/tiny_rag/done.json", "results/runs/tiny_rag/eval/metrics.json"):
        (work / lost).unlink()
    assert dry_run(work, *tiny).get("rag_finetune") == 1


@pytest.mark.slow
def test_offline_plot_template_renders(tmp_path):
    """`dvc plots show` with the inlined-vega template draws the chart with no network (checked in Chromium)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("chromium not installed (apt-get install chromium) - cannot render the page headless")
    (tmp_path / "metrics.csv").write_text("run,f1\nrag,0.62\nrefrag,0.48\n")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": [{"metrics.csv": {
        "x": "f1", "y": "run", "template": "bar_horizontal"}}]}))
    run(tmp_path, "dvc", "init", "--no-scm", "-q")
    template = ROOT / "workflow" / "dvc_plots" / "offline.html"
    run(tmp_path, "dvc", "plots", "show", "--html-template", template, "-o", "plots")
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "vega-embed" in page
    shot = tmp_path / "shot.png"
    run(tmp_path, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
        f"--screenshot={shot}", "--window-size=800,600", (tmp_path / "plots" / "index.html").as_uri(), timeout=120)
    from PIL import Image
    img = Image.open(shot).convert("L")
    dark = sum(1 for px in img.get_flattened_data() if px < 200)
    assert dark > 2000, f"page rendered (almost) blank: {dark} non-white pixels in {shot}"
