"""BM25 speed: rank-bm25 (pure Python reference) vs our bm25s retriever (numba and numpy backends).

SciFact corpus (5,183 abstracts), a batch of 1,000 train queries (repeated to fill), top_k=10,
same tokenisation (ours: stopwords + Snowball) and the same BM25 formula on both sides (rank-bm25
BM25Okapi epsilon=0 == bm25s method="atire", idf_method="robertson"; k1=1.5, b=0.75).
rank-bm25 scores every document in Python per query (~17 q/s), so it is timed on a subset.

    python -m bench.bm25_speed            # 1,000 queries, 50 for rank-bm25
    python -m bench.bm25_speed --quick    # 200 queries, 10 for rank-bm25, 1,500 documents
"""
from __future__ import annotations

import json
import sys
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from nanochat.cli import ArgumentParser

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"


def read_jsonl(path, limit=None):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for i, line in enumerate(f) if limit is None or i < limit]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def best_of(fn, repeats=5):
    """Fast paths finish a batch in tens of milliseconds: keep the best of a few runs to read past noise."""
    runs = [timed(fn) for _ in range(repeats)]
    return runs[0][0], min(t for _, t in runs)


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="BEIR SciFact folder (corpus.jsonl, queries.jsonl)")
    p.add_argument("--n_queries", type=int, default=1000, help="query batch size for bm25s (queries repeated to fill)")
    p.add_argument("--n_ref_queries", type=int, default=50, help="queries timed with rank-bm25 (slow)")
    p.add_argument("--n_docs", type=int, default=-1, help="corpus documents to index (-1 = all)")
    p.add_argument("--top_k", type=int, default=10, help="results per query")
    p.add_bool("--quick", default=False, help="200 queries, 10 rank-bm25 queries, 1,500 documents")
    args = p.parse_args(argv)
    if args.quick:
        args.n_queries, args.n_ref_queries, args.n_docs = 200, 10, 1500

    from rank_bm25 import BM25Okapi

    from nanochat.retrieval import RetrievalManager, build_knowledge_base
    from nanochat.retrieval.bm25 import numba_available
    from nanochat.retrieval.kb import passage_texts

    data = Path(args.data)
    corpus = read_jsonl(data / "corpus.jsonl", None if args.n_docs < 0 else args.n_docs)
    docs = [{"id": d["_id"], "title": d["title"], "content": d["text"]} for d in corpus if d["text"].strip()]
    qtexts = [q["text"] for q in read_jsonl(data / "queries.jsonl")]
    queries = (qtexts * (args.n_queries // len(qtexts) + 1))[:args.n_queries]
    ref_queries = queries[:args.n_ref_queries]
    settings = {"k1": 1.5, "b": 0.75, "method": "atire", "idf_method": "robertson"}
    print(f"corpus {len(docs)} docs, {len(queries)} queries (rank-bm25: {len(ref_queries)}), top_k={args.top_k}, {settings}")

    with tempfile.TemporaryDirectory() as tmp:
        _, t_build = timed(lambda: build_knowledge_base(docs, tmp, ["bm25"], chunk_tokens=100_000, chunk_overlap=0,
                                                        bm25_settings=settings, show_progress=False))
        numpy_mgr = RetrievalManager("bm25", tmp, backend="numpy")
        tok = numpy_mgr.retriever.tokenizer
        texts = passage_texts(numpy_mgr.kb.chunks)
        corpus_tokens, t_tok = timed(lambda: tok.batch(texts))
        ref, t_ref_build = timed(lambda: BM25Okapi(corpus_tokens, k1=settings["k1"], b=settings["b"], epsilon=0.0))

        def ref_search():
            out = []
            for q in ref_queries:
                s = ref.get_scores(tok(q))
                top = np.argsort(-s, kind="stable")[:args.top_k]
                out.append([int(i) for i in top if s[i] > 0])
            return out
        ref_top, t_ref = timed(ref_search)
        rows = [("rank-bm25 BM25Okapi", len(ref_queries) / t_ref, None)]

        (np_idx, _), t_np = best_of(lambda: numpy_mgr.search_batch(queries, args.top_k))
        rows.append(("bm25s, numpy backend", len(queries) / t_np, np_idx))
        t_jit = None
        if numba_available():
            nb_mgr, t_jit = timed(lambda: RetrievalManager("bm25", tmp, backend="numba"))
            _, t_warm = timed(lambda: nb_mgr.search_batch(queries[:2], args.top_k))  # first call compiles
            t_jit += t_warm
            (nb_idx, _), t_nb = best_of(lambda: nb_mgr.search_batch(queries, args.top_k))
            rows.append(("bm25s, numba backend", len(queries) / t_nb, nb_idx))
            mt_mgr = RetrievalManager("bm25", tmp, backend="numba", n_threads=-1)
            mt_mgr.search_batch(queries[:2], args.top_k)
            (mt_idx, _), t_mt = best_of(lambda: mt_mgr.search_batch(queries, args.top_k))
            rows.append((f"bm25s, numba, {os.cpu_count()} threads", len(queries) / t_mt, mt_idx))

    ref_qps = rows[0][1]
    print(f"\nindex build: ours (validate+chunk+tokenise+index+save) {t_build:.2f}s | rank-bm25 {t_ref_build:.2f}s "
          f"(+ tokenisation {t_tok:.2f}s, shared)")
    if t_jit is not None:
        print(f"numba JIT compile + warm-up (once per process): {t_jit:.2f}s")
    print(f"\n{'retriever':<24}{'queries/s':>12}{'speed-up':>11}{'top-10 identical':>19}")
    for name, qps, idx in rows:
        agree = ""
        if idx is not None:
            same = sum([int(i) for i in idx[j] if i >= 0] == ref_top[j] for j in range(len(ref_top)))
            agree = f"{same}/{len(ref_top)} ({same / len(ref_top):.1%})"
        print(f"{name:<24}{qps:>12.1f}{qps / ref_qps:>10.0f}x{agree:>19}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
