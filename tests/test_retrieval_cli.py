"""The guide's knowledge-base commands, run as the user would (subprocesses from the repo root).

Run: python -m pytest -q tests/test_retrieval_cli.py
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nanochat.retrieval import KnowledgeBase, RetrievalManager
from nanochat.retrieval.__main__ import main as retrieval_main

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"


def run(*args, ok=True):
    p = subprocess.run([sys.executable, "-m", *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=300)
    if ok:
        assert p.returncode == 0, f"{args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


@pytest.mark.slow
def test_build_then_query_from_the_shell(tmp_path):
    kb = tmp_path / "my_kb"
    out = run("nanochat.retrieval", "--documents", DATA / "docs_valid.jsonl", "--output", kb, "--type", "simple").stdout
    assert "Knowledge base ready" in out and "3 documents" in out
    q = run("nanochat.retrieval", "--knowledge_base", kb, "--type", "simple", "--query", "why is the sky blue", "--top_k", "2").stdout
    lines = [line for line in q.splitlines() if line.startswith("Score: ")]
    assert lines[0].startswith("Score: ") and "- Why the sky is blue" in lines[0] and len(lines) <= 2
    assert float(lines[0].split()[1]) > 0


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert retrieval_main(["--knowledge_base", str(tmp_path / "nowhere"), "--type", "simple", "--query", "x"]) == 1
    assert capsys.readouterr().err.startswith(f"ERROR Knowledge base not found: {tmp_path / 'nowhere'}")
    assert retrieval_main(["--documents", str(DATA / "docs_duplicate_id.jsonl"), "--output", str(tmp_path / "kb2")]) == 1
    assert "docs_duplicate_id.jsonl:2: id: duplicate id 'sky'" in capsys.readouterr().err
    assert not (tmp_path / "kb2" / "manifest.json").exists()


@pytest.mark.slow
def test_prepare_rag_dataset_example_and_build(tmp_path):
    out = tmp_path / "rag_examples"
    run("scripts.prepare_rag_dataset", "--mode", "example", "--output", out)
    docs = [json.loads(line) for line in (out / "documents.jsonl").read_text().splitlines()]
    train = [json.loads(line) for line in (out / "queries_train.jsonl").read_text().splitlines()]
    val = [json.loads(line) for line in (out / "queries_val.jsonl").read_text().splitlines()]
    assert len(docs) == 10 and len(train) >= 10 and len(val) >= 3
    ids = {d["id"] for d in docs}
    for row in train + val:
        assert set(row) == {"id", "question", "answers", "doc_ids"} and set(row["doc_ids"]) <= ids
        src = next(d for d in docs if d["id"] == row["doc_ids"][0])
        assert all(a in src["content"] for a in row["answers"])      # answers are spans of their document
    assert KnowledgeBase.load(out / "knowledge_base").retriever_types == ["simple", "bm25"]
    manager = RetrievalManager(retriever_type="bm25", knowledge_base_path=out / "knowledge_base")
    hits = manager.retrieve_batch([r["question"] for r in train], top_k=3)
    recall = sum(r["doc_ids"][0] in [d.metadata["doc_id"] for d in h] for r, h in zip(train, hits)) / len(train)
    assert recall >= 0.9
    from scripts.prepare_rag_dataset import main as prepare_main  # build mode in-process (same main(argv))
    assert prepare_main(["--mode", "build", "--documents", str(out / "documents.jsonl"),
                         "--output", str(tmp_path / "my_kb"), "--retriever_type", "bm25"]) == 0
    assert KnowledgeBase.load(tmp_path / "my_kb").retriever_types == ["bm25"]


def test_stage_wise_pipeline(tmp_path):
    """validate -> chunk -> index, as the Snakemake rules run them (in-process: same main(argv))."""
    from nanochat.data.chunking import main as chunking_main
    from nanochat.data.documents import main as documents_main
    assert documents_main(["--input", str(DATA / "docs_missing_field.jsonl"), "--output", str(tmp_path / "valid.jsonl"),
                           "--rejected", str(tmp_path / "rejected.jsonl"), "--mode", "lenient"]) == 0
    assert len((tmp_path / "rejected.jsonl").read_text().splitlines()) == 4
    assert chunking_main(["--input", str(tmp_path / "valid.jsonl"), "--output", str(tmp_path / "chunks.parquet"),
                          "--chunk_tokens", "12", "--overlap", "3"]) == 0
    assert retrieval_main(["--chunks", str(tmp_path / "chunks.parquet"), "--output", str(tmp_path / "kb"),
                           "--type", "bm25,simple"]) == 0
    kb = KnowledgeBase.load(tmp_path / "kb")
    assert kb.retriever_types == ["simple", "bm25"] and kb.manifest["counts"]["documents"] == 1
    assert kb.chunks["id"].tolist()[:2] == ["sky#0", "sky#1"]
