"""Workflow reproducibility (issue 18): one kb_id for the same documents under two KB names, and the whole
DAG run twice from scratch in two folders under two PYTHONHASHSEEDs.

    python -m pytest -q tests/workflow/test_reproducible.py      # slow: ~4 min on 2 CPU cores
"""
import json
import sys

import pytest
import yaml

from wfhelpers import ROOT, TINY, copy_workflow, snakemake

sys.path.insert(0, str(ROOT))  # bench/ is a folder of scripts beside the package
from bench.reproducibility import compare, print_report, run_dag  # noqa: E402

# the same documents and settings declared as two knowledge bases
TWO_KBS = {
    "knowledge_bases": {
        "one": {"documents": "tests/workflow/data/documents.jsonl", "chunk_tokens": 64, "chunk_overlap": 8},
        "four": {"documents": "tests/workflow/data/documents.jsonl", "chunk_tokens": 64, "chunk_overlap": 8},
    },
    "models": {"small": {"depth": 2, "n_embd": 32, "block_pattern": "T,M"}},
    "runs": {
        f"{kb}_{t}": {"knowledge_base": kb, "model": "small", "retriever_type": t,
                      "queries": {s: "tests/workflow/data/queries.jsonl" for s in ("train", "val", "test")}}
        for kb, t in (("one", "bm25"), ("four", "dense"))
    },
}


@pytest.mark.slow
def test_two_kb_names_for_the_same_documents_share_one_kb_id(tmp_path):
    work = copy_workflow(tmp_path)
    config = work / "tests/workflow/config_two_kbs.yaml"
    config.write_text(yaml.safe_dump(TWO_KBS))
    targets = [f"results/kb/{kb}/{t}/manifest.json" for kb in ("one", "four") for t in ("bm25", "dense")]
    snakemake(work, "--cores", "all", "--configfile", config, "--replace-workflow-config", *targets)
    for t in ("bm25", "dense"):
        one, four = (json.loads((work / f"results/kb/{kb}/{t}/manifest.json").read_text()) for kb in ("one", "four"))
        assert one["kb_id"] == four["kb_id"], t
        assert one["inputs"]["chunks"] == "results/kb/one/chunks.parquet"  # where it came from: recorded, not hashed
        for rel, entry in one["files"].items():
            assert four["files"][rel]["sha256"] == entry["sha256"], f"{t}: {rel} differs between the two KBs"


@pytest.mark.slow
def test_whole_dag_twice_from_scratch_is_byte_identical_but_for_wall_clock_fields(tmp_path):
    """KBs, retrieval, dataset shards, tokenizer and checkpoints byte-identical; only the documented timing
    fields (bench/reproducibility.py EXPECTED_DIFFERENCES, docs/REPRODUCIBILITY.md) may differ."""
    a, b = copy_workflow(tmp_path / "A"), copy_workflow(tmp_path / "B")
    run_dag(a, 1, TINY, timeout=1800)
    run_dag(b, 2, TINY, timeout=1800)
    result = compare(a, b)
    print_report(result)
    assert not result["unexpected"], result["unexpected"]
    stages = result["stages"]
    for stage in ("knowledge bases", "precomputed retrieval", "dataset shards", "tokenizer"):
        s = stages[stage]  # the retrieval tables' sidecars differ only in their documented timing fields
        assert s["files"] > 0 and s["identical"] + s["expected"] == s["files"] and s["unexpected"] == 0, (stage, s)
    differing = [r["path"] for r in result["files"]]
    assert not [p for p in differing if p.endswith((".parquet", ".npy", ".npz"))], differing  # tables, vectors, shards
    checkpoints = [r for r in result["files"] if r["path"].endswith(".pt")]
    assert not checkpoints, checkpoints  # model, optimizer and train-state files are byte-identical
    assert any(p.suffix == ".pt" for p in (a / "results/checkpoints").rglob("*.pt"))
