"""dvc.yaml: generated from the Snakemake DAG (parity), reproducible, push/pull round trip, offline plots.

    python -m pytest -q tests/workflow/test_dvc.py
"""
import hashlib
import shutil
import subprocess
import sys

import pytest
import yaml

from wfhelpers import ROOT, TINY, copy_workflow, dry_run, snakemake


def run(cwd, *cmd, timeout=600):
    proc = subprocess.run(list(map(str, cmd)), cwd=cwd, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-5000:]}"
    return proc.stdout


def digest(paths):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(paths) if p.is_file()}


def test_committed_dvc_yaml_matches_generator():
    proc = subprocess.run([sys.executable, "-m", "nanochat.workflow_tools", "dvc", "--check"], cwd=ROOT, text=True,
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


@pytest.mark.slow
def test_dvc_repro_push_pull_round_trip(tmp_path):
    work = copy_workflow(tmp_path / "work")
    run(work, sys.executable, "-m", "nanochat.workflow_tools", "dvc", "--configfile", TINY)
    run(work, "dvc", "init", "--no-scm", "-q")
    run(work, "dvc", "repro", "knowledge_base")  # documents -> knowledge_base, through Snakemake
    outs = list((work / "results").rglob("*"))
    before = digest(outs)
    assert "results/kb/tiny/bm25/manifest.json" in {str(p.relative_to(work)) for p in outs}
    assert "Stage 'knowledge_base' didn't change" in run(work, "dvc", "repro", "knowledge_base")

    run(work, "dvc", "remote", "add", "-d", "local", tmp_path / "remote")
    run(work, "dvc", "push")
    shutil.rmtree(work / "results")
    shutil.rmtree(work / ".dvc" / "cache")
    run(work, "dvc", "pull", "documents", "knowledge_base")
    assert digest(outs) == before
    # Restored files get fresh mtimes; --touch makes Snakemake accept them without re-running anything.
    tiny = ("--configfile", TINY, "--replace-workflow-config", "results/kb/tiny/bm25/manifest.json")
    snakemake(work, "--touch", "--cores", "1", *tiny)
    assert dry_run(work, *tiny) == {}


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
