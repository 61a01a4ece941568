"""The Snakemake workflow: lint, DAG shape, end-to-end tiny run, idempotence, targeted re-runs.

    python -m pytest -q tests/workflow/test_workflow.py
"""
import json
import signal
import subprocess
import sys
import time

import pytest

from wfhelpers import ROOT, TINY, copy_workflow, dry_run, kill_and_unlock, snakemake

FULL_RAG = {"validate_documents", "chunk_documents", "build_index", "train_tokenizer", "base_train",
            "precompute_retrieval", "check_leakage", "build_dataset", "rag_finetune", "refrag_finetune",
            "evaluate_run", "evaluate_refrag_run", "report"}


def jobs_of(configfile):
    """Rule -> job count of the whole DAG (as with --forceall), via the generator's job table."""
    code = ("import json, collections; from nanochat.pipeline.dvc import snakemake_jobs; "
            f"print(json.dumps(collections.Counter(j['rule'] for j in snakemake_jobs(configfile={configfile!r}))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, text=True, capture_output=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_lint_is_clean():
    proc = snakemake(ROOT, "--lint", check=False)
    assert proc.returncode == 0 and "Congratulations" in proc.stdout, proc.stdout[-4000:]


def test_default_dag_shape():
    jobs = jobs_of("config/config.yaml")
    assert jobs == {"all": 1, "synthetic_world": 1, "validate_documents": 1, "chunk_documents": 1,
                    "build_index": 2, "train_tokenizer": 1, "base_train": 1, "precompute_retrieval": 2,
                    "check_leakage": 2, "build_dataset": 2, "rag_finetune": 1, "refrag_finetune": 1,
                    "evaluate_run": 1, "evaluate_refrag_run": 1, "report": 1}, jobs


def test_multi_kb_multi_run_dag_shape():
    jobs = jobs_of("tests/workflow/config_multi.yaml")
    # 2 KBs; indices: alpha simple+bm25+dense, beta simple+hybrid; embeddings only where dense/hybrid needs them;
    # base models per (KB, size): alpha.small, beta.wide, beta.small; 3 rag runs + 1 refrag run.
    assert jobs == {"all": 1, "synthetic_world": 1, "validate_documents": 2, "chunk_documents": 2,
                    "embed_chunks": 2, "build_index": 5, "train_tokenizer": 2, "base_train": 3,
                    "precompute_retrieval": 4, "check_leakage": 4, "build_dataset": 4, "rag_finetune": 3,
                    "refrag_finetune": 1, "evaluate_run": 3, "evaluate_refrag_run": 1, "report": 1}, jobs


def test_gpu_resources_accepted(tmp_path):
    work = copy_workflow(tmp_path)
    jobs = dry_run(work, "--cores", "all", "--resources", "gpu=8", "--configfile", TINY, "--replace-workflow-config")
    assert jobs["rag_finetune"] == 1 and jobs["base_train"] == 1


@pytest.mark.slow
def test_end_to_end_then_nothing_to_do_then_targeted_reruns(tiny_run):
    work, _ = tiny_run
    metrics = json.loads((work / "results/runs/tiny_rag/eval/metrics.json").read_text())
    manifest = json.loads((work / "results/kb/tiny/bm25/manifest.json").read_text())
    assert metrics["kb_id"] == manifest["kb_id"]  # metrics name the exact KB they were measured on
    table = (work / "results/report/metrics.csv").read_text()
    assert manifest["kb_id"] in table and table.startswith("run,")
    assert (work / "results/checkpoints/rag_checkpoints/tiny_rag/done.json").is_file()

    tiny = ("--configfile", TINY, "--replace-workflow-config")
    assert dry_run(work, *tiny) == {}, "a second run must have nothing to do"
    snakemake(work, "--report", "report.html", *tiny)
    html = (work / "report.html").read_text(errors="replace")
    assert "metrics.csv" in html and "metrics.png" in html

    # A retriever setting: base model, tokenizer, KB and precomputed retrieval are reused.
    changed = work / "tests/workflow/config_topk.yaml"
    changed.write_text((work / TINY).read_text().replace("top_k: 2", "top_k: 1", 1))  # the rag run
    jobs = dry_run(work, "--configfile", changed, "--replace-workflow-config")
    # the refrag run starts from the rag run's model and is compared with it: it follows
    assert set(jobs) == {"build_dataset", "rag_finetune", "evaluate_run", "refrag_finetune", "evaluate_refrag_run",
                         "report", "all"}, jobs

    # One edited document: everything downstream of the KB re-runs, the queries-only leakage check does not.
    docs = work / "results/synthetic/documents.jsonl"
    lines = docs.read_text().splitlines()
    record = json.loads(lines[0])
    record["content"] += " An edited sentence."
    docs.write_text("\n".join([json.dumps(record)] + lines[1:]) + "\n")
    jobs = dry_run(work, *tiny)
    assert set(jobs) == FULL_RAG - {"check_leakage"} | {"all"}, jobs


@pytest.mark.slow
def test_interrupted_job_leaves_no_complete_output(tmp_path):
    """A job killed midway leaves no declared output (atomic writes), and Snakemake marks nothing as done."""
    work = copy_workflow(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1", "results/synthetic/manifest.json",
                             "--configfile", TINY, "--replace-workflow-config"], cwd=work, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (work / ".snakemake" / "incomplete").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: Snakemake stops the job and removes its partial outputs
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:  # then a hard kill of the group this test started (worst case: power loss)
        kill_and_unlock(work, proc)  # and, as the README says, --unlock: no stale lock is left behind
    manifest = work / "results/synthetic/manifest.json"
    if manifest.exists():  # the job won the race and finished: then it is complete and consistent
        assert json.loads(manifest.read_text())["n_documents"] > 0
    else:  # killed midway: nothing looks complete, and the next run redoes the job
        jobs = dry_run(work, "--rerun-incomplete", "--configfile", TINY, "--replace-workflow-config",
                       "results/synthetic/manifest.json")
        assert jobs.get("synthetic_world") == 1, jobs


def test_four_kbs_three_runs_dag_shape():
    """The planning-time config (4 KBs x 3 runs): one index per (KB, type used, plus the text index)."""
    jobs = jobs_of("tests/workflow/config_4kb.yaml")
    assert jobs == {"all": 1, "synthetic_world": 1, "validate_documents": 4, "chunk_documents": 4, "embed_chunks": 4,
                    "build_index": 13, "train_tokenizer": 4, "base_train": 4, "precompute_retrieval": 12,
                    "check_leakage": 12, "build_dataset": 12, "rag_finetune": 8, "refrag_finetune": 4,
                    "evaluate_run": 8, "evaluate_refrag_run": 4, "report": 1}, jobs
