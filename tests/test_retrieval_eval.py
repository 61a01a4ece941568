"""Retrieval evaluation: BEIR loaders, metric math (hand-checked, ranx == numpy), pinned SciFact BM25 run.

    python -m pytest tests/test_retrieval_eval.py -q
"""
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from nanochat.data.sources.beir import load_corpus, load_qrels, load_queries
from nanochat.retrieval.evaluate import compute_metrics, main, run_from_indices

SCIFACT = Path("/work/shared/data/scifact")


def test_beir_loaders_plain_and_gzip(tmp_path):
    rows = [{"_id": "d1", "title": "T1", "text": "alpha beta"}, {"_id": 2, "title": "", "text": "gamma"},
            {"_id": "d3", "title": "Only title", "text": ""}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    for name in ("c.jsonl", "c.jsonl.gz"):
        docs = load_corpus(tmp_path / name)
        assert [d["id"] for d in docs] == ["d1", "2", "d3"]
        assert docs[0]["content"] == "alpha beta" and docs[1]["title"] == "" and docs[2]["content"] == "Only title"
    (tmp_path / "q.jsonl").write_text('{"_id": "q1", "text": "what"}\n\n{"_id": "q2", "text": "why"}\n')
    assert load_queries(tmp_path / "q.jsonl") == {"q1": "what", "q2": "why"}
    (tmp_path / "r.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\t2\t2\nq2\td3\t0\n")
    assert load_qrels(tmp_path / "r.tsv") == {"q1": {"d1": 1, "2": 2}, "q2": {"d3": 0}}


def test_beir_loader_errors_name_file_line_field(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"_id": "d1", "title": "t", "text": "x"}\n{"_id": "d2", "title": "t"}\n')
    with pytest.raises(ValueError, match=r"c\.jsonl:2: text: missing"):
        load_corpus(p)
    p.write_text('{"_id": "d1", "text": "x"}\n{"_id": "d1", "text": "y"}\n')
    with pytest.raises(ValueError, match=r"c\.jsonl:2: _id: duplicate id"):
        load_corpus(p)
    p.write_text('{"_id": "d1", "text": "x"}\nnot json\n')
    with pytest.raises(ValueError, match=r"c\.jsonl:2: json: invalid JSON"):
        load_corpus(p)
    r = tmp_path / "r.tsv"
    r.write_text("query-id\tcorpus-id\tscore\nq1\td1\tone\n")
    with pytest.raises(ValueError, match=r"r\.tsv:2: score: expected a number"):
        load_qrels(r)


# hand-checked: q1 relevant {a, b}; ranking [x, a, y, b] -> first hit at rank 2
# ndcg@10 = (1/log2(3) + 1/log2(5)) / (1 + 1/log2(3)) = (0.63093 + 0.43068) / 1.63093 = 0.65092
# recall@10 = 1, recall@2 = 0.5, mrr@10 = 0.5.  q2 relevant {c}, nothing retrieved -> all 0.
QRELS = {"q1": {"a": 1, "b": 1}, "q2": {"c": 1}}
RUN = {"q1": {"x": 4.0, "a": 3.0, "y": 2.0, "b": 1.0}, "q2": {}}
EXPECTED = {"ndcg@10": 0.65092 / 2, "recall@10": 0.5, "recall@2": 0.25, "mrr@10": 0.25}


def test_metrics_hand_checked_numpy():
    got = compute_metrics(QRELS, RUN, list(EXPECTED), scorer="numpy")
    for m, v in EXPECTED.items():
        assert got[m] == pytest.approx(v, abs=1e-4), (m, got)


@pytest.mark.slow  # ranx JIT-compiles its metrics with numba on first use (minutes on a busy 2-core box)
def test_ranx_hand_checked_and_agrees_with_numpy():
    got = compute_metrics(QRELS, RUN, list(EXPECTED), scorer="ranx")
    for m, v in EXPECTED.items():
        assert got[m] == pytest.approx(v, abs=1e-4), (m, got)
    rng = np.random.default_rng(0)
    docs = [f"d{i}" for i in range(40)]
    qrels = {f"q{i}": {d: int(rng.integers(1, 3)) for d in rng.choice(docs, size=rng.integers(1, 4), replace=False)} for i in range(25)}
    run = {q: {d: float(s) for d, s in zip(rng.permutation(docs)[:15], range(15, 0, -1))} for q in qrels}
    metrics = list(EXPECTED)  # same metric functions as above: no second compile
    a, b = compute_metrics(qrels, run, metrics, "ranx"), compute_metrics(qrels, run, metrics, "numpy")
    for m in metrics:
        assert a[m] == pytest.approx(b[m], abs=1e-9), m


def test_run_from_indices_keeps_best_chunk_rank_and_skips_padding():
    doc_ids = np.array(["A", "A", "B", "C"])
    run = run_from_indices(["q"], np.array([[1, 0, 3, -1]]), doc_ids)
    assert run == {"q": {"A": 4.0, "C": 3.0}}


def scifact_subsample(out: Path, n_docs: int = 300, n_seed_queries: int = 120):
    """Deterministic slice: relevant docs of the first train queries, topped up with corpus docs in file order."""
    qrels = load_qrels(SCIFACT / "qrels" / "train.tsv")
    keep = []
    for q in list(qrels)[:n_seed_queries]:
        for d in qrels[q]:
            if d not in keep:
                keep.append(d)
    corpus = {}
    with open(SCIFACT / "corpus.jsonl") as f:
        for line in f:
            doc = json.loads(line)
            corpus[doc["_id"]] = line
    for d in corpus:
        if len(keep) >= n_docs:
            break
        if d not in keep:
            keep.append(d)
    keep_set = set(keep)
    (out / "corpus.jsonl").write_text("".join(corpus[d] for d in keep if d in corpus))
    qsel = {q: r for q, r in qrels.items() if set(r) <= keep_set}
    (out / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                   "".join(f"{q}\t{d}\t{s}\n" for q, r in qsel.items() for d, s in r.items()))
    with open(SCIFACT / "queries.jsonl") as f:
        (out / "queries.jsonl").write_text("".join(l for l in f if json.loads(l)["_id"] in qsel))
    return len(qsel)


@pytest.mark.skipif(not SCIFACT.is_dir(), reason="shared SciFact data not present")
def test_pinned_scifact_subsample_bm25(tmp_path):
    n_queries = scifact_subsample(tmp_path)
    out = tmp_path / "metrics.json"
    argv = ["--corpus", str(tmp_path / "corpus.jsonl"), "--queries", str(tmp_path / "queries.jsonl"),
            "--qrels", str(tmp_path / "qrels.tsv"), "--type", "bm25", "--kb_dir", str(tmp_path / "kb"),
            "--output", str(out), "--scorer", "numpy", "--settings", '{"backend": "numpy"}']  # no numba JIT: fast on 2 cores
    main(argv)
    m = json.loads(out.read_text())
    assert m["num_queries"] == n_queries and m["num_documents"] == 300 and m["retriever_type"] == "bm25"
    assert set(m) >= {"ndcg@10", "recall@10", "recall@100", "mrr@10", "kb_id", "settings", "queries_per_second"}
    assert m["ndcg@10"] == pytest.approx(PINNED_BM25_NDCG10, abs=5e-4)
    # second run reuses the KB and gives the same numbers
    m2 = main(argv)
    assert m2["kb_reused"] and m2["ndcg@10"] == pytest.approx(m["ndcg@10"], abs=1e-9)


PINNED_BM25_NDCG10 = 0.8521
