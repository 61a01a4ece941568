"""Precomputed retrieval table on a tiny real KB (simple retriever). Run: python -m pytest -q tests/test_precompute.py"""
import importlib.util
import json

import pytest

from nanochat.retrieval.precompute import COLUMNS, load_precomputed, main, meta_path, precompute_retrieval, slice_top_k
from nanochat.data.queries import load_queries
from nanochat.data.synthetic import generate_world


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from nanochat.retrieval.kb import build_knowledge_base
    d = tmp_path_factory.mktemp("pre")
    generate_world(d, seed=0, n_entities=60)
    build_knowledge_base(d / "documents.jsonl", d / "kb", retriever_types=("simple",), show_progress=False)
    files = {s: d / f"queries_{s}.jsonl" for s in ("train", "val", "test")}
    return d, files


def test_table_columns_ranks_and_recall(setup):
    d, files = setup
    out = d / "ret.parquet"
    meta = precompute_retrieval(d / "kb", "simple", files, 8, out)
    t = load_precomputed(out)
    assert list(t.columns) == COLUMNS and len(t) == meta["n_rows"]
    assert set(t["split"]) == {"train", "val", "test"} and (t["hop"] == 1).all()
    for (split, qid), g in t.groupby(["split", "query_id"]):
        assert list(g["rank"]) == list(range(1, len(g) + 1)) and len(g) <= 8
        assert list(g["score"]) == sorted(g["score"], reverse=True)
        assert all(c.split("#")[0] == doc for c, doc in zip(g["chunk_id"], g["doc_id"]))
    # recall in the meta equals a recount from the table
    test_q = load_queries(files["test"])
    for k in (1, 3, 8):
        top = slice_top_k(t[t["split"] == "test"], k).groupby("query_id")["doc_id"].agg(set)
        want = sum(len(set(q["doc_ids"]) & top.get(q["id"], set())) / len(q["doc_ids"]) for q in test_q) / len(test_q)
        assert meta["recall"]["test"][f"recall@{k}"] == pytest.approx(want, abs=1e-6)
    assert meta["recall"]["test"]["recall@1"] > 0.7  # entity names make lexical retrieval easy here
    assert set(meta["key"]["query_sha256"]) == {"train", "val", "test"} and meta["key"]["kb_id"]


def test_slice_and_reuse(setup, tmp_path):
    d, files = setup
    out = tmp_path / "ret.parquet"
    precompute_retrieval(d / "kb", "simple", files, 5, out)
    t = load_precomputed(out)
    s3 = slice_top_k(t, 3)
    assert s3["rank"].max() == 3 and len(s3) == (t["rank"] <= 3).sum()
    with pytest.raises(ValueError):
        slice_top_k(t, 0)
    mtime = out.stat().st_mtime_ns
    again = precompute_retrieval(d / "kb", "simple", files, 5, out)
    assert again["reused"] and out.stat().st_mtime_ns == mtime
    changed = precompute_retrieval(d / "kb", "simple", files, 6, out)  # other key -> recompute
    assert not changed.get("reused") and load_precomputed(out)["rank"].max() == 6
    assert json.loads(meta_path(out).read_text())["key"]["k_max"] == 6


def test_cli_and_multihop_delegation(setup, tmp_path):
    d, files = setup
    out = tmp_path / "cli.parquet"
    assert main(["--knowledge_base", str(d / "kb"), "--retriever_type", "simple", "--queries",
                 f"val={files['val']}", "--k_max", "4", "--output", str(out)]) == 0
    assert set(load_precomputed(out)["split"]) == {"val"}
    if importlib.util.find_spec("nanochat.retrieval.multihop") is None:
        with pytest.raises(RuntimeError, match="nanochat.retrieval.multihop"):
            precompute_retrieval(d / "kb", "simple", {"val": files["val"]}, 4, tmp_path / "mh.parquet", max_hops=2)
    with pytest.raises(FileNotFoundError, match="retrieval table not found"):
        load_precomputed(tmp_path / "nope.parquet")
