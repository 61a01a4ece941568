"""The workflow started from an existing nanochat checkpoint (a models entry with `checkpoint:` + `hybridize:`):
upstream nanochat's Jul-2026 fixture is imported, hybridized on the KB text, RAG fine-tuned and evaluated, with
the checkpoint's own tokenizer instead of one trained on the KB.

    python -m pytest -q tests/workflow/test_upstream_workflow.py
"""
import collections
import json
import shutil
import subprocess
import sys

import pytest

from wfhelpers import ROOT, copy_workflow, dry_run, snakemake

CONFIG = "tests/workflow/config_upstream.yaml"
FIXTURE = "tests/fixtures/nanochat_upstream/2026-07-92d63d4"  # the config's checkpoint.base_dir


def test_dag_imports_and_hybridizes_instead_of_training_a_base_model():
    code = ("import json, collections; from nanochat.pipeline.dvc import snakemake_jobs; "
            f"print(json.dumps(collections.Counter(j['rule'] for j in snakemake_jobs(configfile={CONFIG!r}))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, text=True, capture_output=True, check=True)
    jobs = collections.Counter(json.loads(out.stdout.strip().splitlines()[-1]))
    assert jobs["import_model"] == 1 and jobs["hybridize"] == 1 and jobs["rag_finetune"] == 1
    assert "base_train" not in jobs and "train_tokenizer" not in jobs, jobs


@pytest.mark.slow
def test_from_an_upstream_checkpoint_to_metrics(tmp_path):
    work = copy_workflow(tmp_path)
    shutil.copytree(ROOT / FIXTURE, work / FIXTURE)
    flags = ("--configfile", CONFIG, "--replace-workflow-config")
    snakemake(work, "--cores", "2", *flags)

    ckpts = work / "results/checkpoints/base_checkpoints"
    imported = json.loads((work / "results/imported/upstream_d4/model.json").read_text())
    assert imported["meta"]["imported_from"]["era"] == "2026-07" and imported["meta"]["vocab_growth"]["from"] == 300
    hybrid = json.loads(next((ckpts / "tiny.upstream_d4").glob("meta_*.json")).read_text())
    assert hybrid["lineage"]["teacher"]["model_tag"] == "upstream_d4" and hybrid["lineage"]["steps"] == 4
    assert hybrid["model_config"]["block_pattern"] == ["T", "T", "M", "M"] and hybrid["model_config"]["smear"]

    # one tokenizer all the way: the checkpoint's (upstream ids, the project's special tokens appended)
    tok_meta = json.loads((work / "results/imported/upstream_d4/tokenizer/tokenizer_meta.json").read_text())
    assert tok_meta["origin"]["format"] == "tiktoken-pickle"
    run_meta = json.loads(next((work / "results/checkpoints/rag_checkpoints/tiny_rag").glob("meta_*.json")).read_text())
    assert run_meta["tokenizer"]["hash"] == hybrid["tokenizer"]["hash"] == imported["meta"]["tokenizer"]["hash"]
    assert run_meta["source_tag"] == "tiny.upstream_d4"

    metrics = json.loads((work / "results/runs/tiny_rag/eval/metrics.json").read_text())
    manifest = json.loads((work / "results/kb/tiny/bm25/manifest.json").read_text())
    assert metrics["kb_id"] == manifest["kb_id"] and metrics["n"] == 5
    assert "tiny_rag" in (work / "results/report/metrics.csv").read_text()
    assert dry_run(work, *flags) == {}, "a second run must have nothing to do"

    # more distillation steps: the hybrid and what follows from it are redone, the import is not
    changed = work / "tests/workflow/config_upstream_steps.yaml"
    changed.write_text((work / CONFIG).read_text().replace("steps: 4", "steps: 5"))
    jobs = dry_run(work, "--configfile", changed, "--replace-workflow-config")
    assert {"hybridize", "rag_finetune", "evaluate_run"} <= set(jobs) and "import_model" not in jobs, jobs
