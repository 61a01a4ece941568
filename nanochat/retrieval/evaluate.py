"""Retrieval quality on a BEIR dataset: build (or reuse) a KB from the corpus, retrieve, score.

    python -m nanochat.retrieval.evaluate --corpus corpus.jsonl --queries queries.jsonl --qrels qrels/train.tsv \
        --type bm25 [--top_k 100] [--kb_dir DIR] --output metrics.json

Each BEIR passage (title + text) is one chunk, so chunk hits map 1:1 to documents (for chunked
KBs a document takes its best chunk's rank). Only queries that have qrels are run. Metrics are
the trec_eval definitions via ranx (`--scorer ranx`, default) or an equivalent numpy scorer
(`--scorer numpy`, no numba JIT warm-up; a test keeps the two equal). The ranking is scored
exactly as returned: scores handed to the scorer are rank-based, so ties cannot reorder it.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from nanochat.common import atomic_write_json, print0

DEFAULT_METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")


# -----------------------------------------------------------------------------
# Runs and metrics

def run_from_indices(qids: list[str], indices: np.ndarray, doc_ids: np.ndarray) -> dict[str, dict[str, float]]:
    """Retriever rows (Q, k) -> BEIR results {qid: {doc_id: score}}, score = k - rank (best first, no ties).

    A document retrieved through several chunks keeps its best rank.
    """
    k = indices.shape[1]
    run = {}
    for qid, row in zip(qids, indices):
        hits: dict[str, float] = {}
        rank = 0
        for i in row:
            if i < 0:
                continue
            did = str(doc_ids[i])
            if did not in hits:
                hits[did] = float(k - rank)
                rank += 1
        run[qid] = hits
    return run


def ranking_metric(name: str, rels: dict[str, int], ranked: list[str]) -> float:
    """One query's ndcg@k / recall@k / precision@k / mrr@k of a ranked list of doc ids (the one implementation;
    ranx computes the same numbers for whole runs)."""
    metric, _, cut = name.partition("@")
    k = int(cut) if cut else len(ranked)
    top = ranked[:k]
    relevant = {d for d, r in rels.items() if r > 0}
    if metric == "recall":
        return sum(d in relevant for d in top) / len(relevant) if relevant else 0.0
    if metric == "precision":
        return sum(d in relevant for d in top) / k
    if metric == "mrr":
        return next((1.0 / (r + 1) for r, d in enumerate(top) if d in relevant), 0.0)
    if metric == "ndcg":  # trec_eval / ranx: gain = relevance, log2 discount
        dcg = sum(rels.get(d, 0) / math.log2(r + 2) for r, d in enumerate(top) if rels.get(d, 0) > 0)
        ideal = sorted((r for r in rels.values() if r > 0), reverse=True)[:k]
        idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
        return dcg / idcg if idcg > 0 else 0.0
    raise ValueError(f"unsupported metric {name!r}; use ndcg@k, recall@k, precision@k or mrr@k")


def compute_metrics(qrels: dict, run: dict, metrics=DEFAULT_METRICS, scorer: str = "ranx") -> dict[str, float]:
    """Mean of each metric over the qrels' queries (a query missing from the run scores 0)."""
    metrics = list(metrics)
    if scorer == "ranx":
        from ranx import Qrels, Run, evaluate
        full_run = {q: run.get(q, {}) for q in qrels}
        if all(len(v) == 0 for v in full_run.values()):
            return {m: 0.0 for m in metrics}
        # ranx rejects empty result lists: give a query with no hits one impossible document
        full_run = {q: (v if v else {"__no_hit__": 0.0}) for q, v in full_run.items()}
        out = evaluate(Qrels(qrels), Run(full_run), metrics, make_comparable=True)
        out = out if isinstance(out, dict) else {metrics[0]: out}
        return {m: float(out[m]) for m in metrics}
    if scorer != "numpy":
        raise ValueError(f"scorer must be 'ranx' or 'numpy', got {scorer!r}")
    out = {}
    for m in metrics:
        vals = []
        for q, rels in qrels.items():
            ranked = sorted(run.get(q, {}).items(), key=lambda kv: (-kv[1], kv[0]))
            vals.append(ranking_metric(m, rels, [d for d, _ in ranked]))
        out[m] = float(np.mean(vals)) if vals else 0.0
    return out


# -----------------------------------------------------------------------------
# KB from a BEIR corpus

def build_or_load_kb(docs: list[dict], kb_dir, retriever_type: str | list[str], model: str = "all-MiniLM-L6-v2",
                     precision: str = "auto", embeddings_path=None, retriever_settings: dict | None = None,
                     embedding_cache=None):
    """Reuse the KB at kb_dir when it holds these exact passages and the index(es); else (re)build it.

    Returns (kb, reused). Indexes already in kb_dir for the same passages are kept. With embedding_cache, a
    rebuild after a corpus edit encodes only the passages the cache lacks.
    """
    import tempfile
    from nanochat.data.sources.beir import corpus_to_chunks
    from nanochat.data.chunking import chunks_to_frame
    from nanochat.retrieval.kb import KnowledgeBase, _read_manifest, build_knowledge_base_from_chunks, chunks_fingerprint
    from nanochat.retrieval.registry import expand_types, in_build_order
    kb_dir = Path(kb_dir)
    chunks = chunks_to_frame(corpus_to_chunks(docs))
    fp = chunks_fingerprint(chunks)
    old = _read_manifest(kb_dir)
    wanted = expand_types(retriever_type)
    if old and old.get("chunks_fingerprint") == fp and all(t in old.get("retrievers", {}) for t in wanted) \
            and not retriever_settings and (embeddings_path is None or "dense" not in wanted):
        return KnowledgeBase.load(kb_dir, verify=False), True
    types = in_build_order(set(wanted) | set((old or {}).get("retrievers", {}) if old and old.get("chunks_fingerprint") == fp else set()))
    emb_info = None
    if embeddings_path is not None:
        side = Path(embeddings_path).with_suffix(".json")
        emb_info = json.loads(side.read_text()) if side.is_file() else {"model": model, "precision": precision}
    with tempfile.TemporaryDirectory() as tmp:
        chunks_path = Path(tmp) / "chunks.parquet"
        chunks.to_parquet(chunks_path, index=False)
        kb = build_knowledge_base_from_chunks(chunks_path, kb_dir, types, embeddings_path=embeddings_path,
                                              embedder_info=emb_info, model=model, precision=precision,
                                              retriever_settings=retriever_settings or {},
                                              chunker={"beir": "one chunk per passage"}, embedding_cache=embedding_cache)
    return kb, False


def evaluate_retriever(kb, retriever_type: str, queries: dict[str, str], qrels: dict, top_k: int = 100,
                       metrics=DEFAULT_METRICS, scorer: str = "ranx", embedding_cache=None, **load_settings) -> dict:
    """Run the queries that have qrels through one retriever of a loaded KB; metrics + timing."""
    qids = [q for q in qrels if q in queries]
    if not qids:
        raise ValueError("no query id of the qrels appears in the queries file; are they from the same dataset/split?")
    retriever = kb.retriever(retriever_type, **load_settings)
    if embedding_cache:
        from nanochat.retrieval.precompute import attach_embedding_cache
        attach_embedding_cache(retriever, embedding_cache)
    retriever.search_batch([queries[qids[0]]], top_k)  # warm-up: model load / JIT compile is not search speed
    t0 = time.perf_counter()
    idx, _ = retriever.search_batch([queries[q] for q in qids], top_k)
    dt = time.perf_counter() - t0
    run = run_from_indices(qids, idx, kb.chunks["doc_id"].to_numpy())
    scores = compute_metrics({q: qrels[q] for q in qids}, run, metrics, scorer)
    settings = dict((kb.manifest.get("retrievers", {}).get(retriever_type) or {}).get("settings", {}))
    settings.update(getattr(retriever, "settings", {}) if isinstance(getattr(retriever, "settings", None), dict) else {})
    return {**scores, "kb_id": kb.kb_id, "retriever_type": retriever_type, "settings": settings,
            "num_queries": len(qids), "num_queries_without_qrels_skipped": len(queries) - len(qids),
            "num_documents": int(kb.chunks["doc_id"].nunique()), "top_k": top_k,
            "search_seconds": round(dt, 4), "queries_per_second": round(len(qids) / dt, 2) if dt > 0 else None,
            "scorer": scorer, "_run": run}


def main(argv=None):
    from nanochat.data.sources.beir import load_corpus, load_qrels, load_queries
    from nanochat.cli import ArgumentParser, output_file
    from nanochat.retrieval.embeddings import PRECISIONS
    from nanochat.retrieval.registry import RETRIEVERS
    parser = ArgumentParser(description="Retrieval metrics (nDCG@10, recall@10/100, MRR@10) on a BEIR dataset.")
    parser.add_argument("--corpus", required=True, help="BEIR corpus.jsonl[.gz] (_id, title, text)")
    parser.add_argument("--queries", required=True, help="BEIR queries.jsonl (_id, text)")
    parser.add_argument("--qrels", required=True, help="qrels TSV (query-id, corpus-id, score)")
    parser.add_argument("--type", default="bm25", choices=list(RETRIEVERS), help="retriever")
    parser.add_argument("--top_k", type=int, default=100, help="hits per query (>= 100 for recall@100)")
    parser.add_argument("--kb_dir", default=None, help="build the KB here, or reuse it if it already matches (default: a temp dir)")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="embedding model (dense/hybrid)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="embedding precision")
    parser.add_argument("--embeddings", default=None, help="precomputed embeddings.npy (from python -m nanochat.retrieval.embeddings)")
    parser.add_argument("--settings", default=None, help='JSON search-time settings for the retriever, e.g. \'{"fusion": "rrf"}\'')
    parser.add_argument("--scorer", default="ranx", choices=["ranx", "numpy"], help="metric implementation")
    parser.add_argument("--run_output", default=None, help="also write the BEIR results {qid: {doc_id: score}} JSON here")
    parser.add_argument("--embedding_cache", default=None,
                        help="embedding cache directory (nanochat.retrieval.embed_cache): passages and queries it holds "
                             "are not encoded again")
    parser.add_argument("--output", type=output_file, required=True, help="metrics.json")
    args = parser.parse_args(argv)
    load_settings = json.loads(args.settings) if args.settings else {}
    if not isinstance(load_settings, dict):
        raise ValueError(f"--settings must be a JSON object, got {args.settings!r}")

    docs = load_corpus(args.corpus)
    queries = load_queries(args.queries)
    qrels = load_qrels(args.qrels)
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        kb_dir = Path(args.kb_dir) if args.kb_dir else Path(tmp) / "kb"
        kb, reused = build_or_load_kb(docs, kb_dir, args.type, args.model, args.precision, args.embeddings,
                                      embedding_cache=args.embedding_cache)
        result = evaluate_retriever(kb, args.type, queries, qrels, args.top_k, scorer=args.scorer,
                                    embedding_cache=args.embedding_cache, **load_settings)
    run = result.pop("_run")
    result.update({"kb_reused": reused, "corpus": str(args.corpus), "queries": str(args.queries), "qrels": str(args.qrels)})
    atomic_write_json(args.output, result)
    if args.run_output:
        atomic_write_json(args.run_output, run, indent=None)
    print0(" ".join(f"{m}={result[m]:.4f}" for m in DEFAULT_METRICS) +
           f"  ({result['num_queries']} queries, {result['queries_per_second']} q/s, {args.type})")
    return result


if __name__ == "__main__":
    main()
