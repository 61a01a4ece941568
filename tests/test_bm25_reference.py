"""Our bm25s-based retriever against rank-bm25 (the obvious library is the oracle) on a SciFact subsample.

rank-bm25's BM25Okapi with epsilon=0 is bm25s's method="atire" with idf_method="robertson"
(negative idf clipped to 0 in both); same tokenisation, k1 and b. Scores must match to float32
precision and the top-10 lists must be identical for >= 99% of queries (tied scores may swap).

Run: python -m pytest -q tests/test_bm25_reference.py
"""
import json

import numpy as np
import pytest

from nanochat.retrieval import RetrievalManager, build_knowledge_base
from nanochat.retrieval.kb import passage_texts

N_DOCS, N_QUERIES, K1, B = 800, 120, 1.2, 0.75


def read_jsonl(path, limit):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(limit), f)]


@pytest.fixture(scope="module")
def setup(shared_data, tmp_path_factory):
    corpus = read_jsonl(shared_data / "scifact" / "corpus.jsonl", N_DOCS)
    queries = [q["text"] for q in read_jsonl(shared_data / "scifact" / "queries.jsonl", N_QUERIES)]
    docs = [{"id": d["_id"], "title": d["title"], "content": d["text"]} for d in corpus if d["text"].strip()]
    path = tmp_path_factory.mktemp("scifact_kb")
    build_knowledge_base(docs, path, ["bm25"], chunk_tokens=100_000, chunk_overlap=0, show_progress=False,
                         bm25_settings={"k1": K1, "b": B, "method": "atire", "idf_method": "robertson"})
    manager = RetrievalManager("bm25", path, backend="numpy")
    return manager, queries


@pytest.mark.slow
def test_scores_and_top10_match_rank_bm25(setup):
    from rank_bm25 import BM25Okapi
    manager, queries = setup
    ours = manager.retriever
    tok = ours.tokenizer
    ref = BM25Okapi(tok.batch(passage_texts(manager.kb.chunks)), k1=K1, b=B, epsilon=0.0)
    idx, _ = manager.search_batch(queries, top_k=10)
    max_diff, same, same_upto_ties = 0.0, 0, 0
    for qi, q in enumerate(queries):
        terms = tok(q)
        want = ref.get_scores(terms)
        got = ours.model.get_scores([t for t in terms if t in ours.model.vocab_dict])
        max_diff = max(max_diff, float(np.abs(want - got).max()))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"query {qi}: {q!r}")
        ref_top = [int(i) for i in np.argsort(-want, kind="stable")[:10] if want[i] > 0]
        ours_top = [int(i) for i in idx[qi] if i >= 0]
        same += ours_top == ref_top
        # equal scores may come in either order: ours must be a valid reference top-10
        same_upto_ties += len(ours_top) == len(ref_top) and np.allclose(want[ours_top], want[ref_top], rtol=1e-5)
    rate, rate_ties = same / len(queries), same_upto_ties / len(queries)
    print(f"\nmax |score diff| {max_diff:.2e}; identical top-10 for {same}/{len(queries)} queries ({rate:.1%}), "
          f"{same_upto_ties}/{len(queries)} ({rate_ties:.1%}) counting tied scores as interchangeable")
    assert rate_ties >= 0.99, f"top-10 agreement {rate_ties:.1%} < 99%"
    assert rate >= 0.97, f"strict top-10 agreement {rate:.1%} < 97%"
