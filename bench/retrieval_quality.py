"""Retrieval quality on SciFact train: simple, bm25, dense, hybrid (rrf / interpolate) side by side.

    python -m bench.retrieval_quality [--work_dir /tmp/nanochat_bench/scifact] [--embeddings emb.npy] [--scorer numpy]

The KB (all four indexes, embeddings once) is cached in --work_dir, so a re-run only searches.
Hybrid variants fuse the same dense and BM25 candidate lists (fetched once, depth 100), so the
dense-weight sweep tunes on TRAIN only and costs no extra retrieval. Targets: BM25 >= 0.66,
dense >= 0.62, hybrid >= best single + 0.02 (nDCG@10).
"""
from __future__ import annotations

import time
from pathlib import Path


from nanochat.data.sources.beir import load_corpus, load_qrels, load_queries
from nanochat.common import atomic_write_json
from nanochat.retrieval.hybrid import HybridRetriever, fuse
from nanochat.retrieval.evaluate import DEFAULT_METRICS, build_or_load_kb, compute_metrics, evaluate_retriever, run_from_indices

DATA = Path("/work/shared/data/scifact")


def main(argv=None):
    from nanochat.cli import ArgumentParser
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA), help="BEIR folder with corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    p.add_argument("--split", default="train", help="qrels split (never tune on test)")
    p.add_argument("--work_dir", default="/tmp/nanochat_bench/scifact", help="KB cache")
    p.add_argument("--embeddings", default=None, help="precomputed corpus embeddings .npy (corpus order) to skip encoding")
    p.add_argument("--scorer", default="numpy", choices=["numpy", "ranx"], help="metric implementation (tested equal)")
    p.add_argument("--weights", default="0.3,0.35,0.4,0.45,0.5,0.55,0.6,0.7", help="dense weights swept for interpolation")
    p.add_argument("--types", default="simple,bm25,dense,hybrid", help="subset to run (hybrid needs dense and bm25)")
    p.add_argument("--output", default=None, help="write all figures as JSON here")
    args = p.parse_args(argv)

    data = Path(args.data)
    docs = load_corpus(next(f for f in (data / "corpus.jsonl", data / "corpus.jsonl.gz") if f.is_file()))
    queries, qrels = load_queries(data / "queries.jsonl"), load_qrels(data / "qrels" / f"{args.split}.tsv")
    t0 = time.perf_counter()
    types = args.types.split(",")
    kb, reused = build_or_load_kb(docs, Path(args.work_dir) / "kb", types, embeddings_path=args.embeddings)
    print(f"KB {'reused' if reused else 'built'} in {time.perf_counter() - t0:.1f}s: {len(kb.chunks)} passages, kb_id {kb.kb_id[:12]}")

    rows = {}
    for t in [t for t in ("simple", "bm25", "dense") if t in types]:
        rows[t] = evaluate_retriever(kb, t, queries, qrels, top_k=100, scorer=args.scorer)
        rows[t].pop("_run")

    if "hybrid" not in types:
        for name, r in rows.items():
            print(f"{name:<10}" + "".join(f" {m}={r[m]:.4f}" for m in DEFAULT_METRICS) + f"  q/s={r['queries_per_second']}")
        return rows
    # hybrid: one dense + one bm25 candidate list per query, fused many ways
    qids = [q for q in qrels if q in queries]
    texts = [queries[q] for q in qids]
    sub_qrels = {q: qrels[q] for q in qids}
    doc_ids = kb.chunks["doc_id"].to_numpy()
    hyb = kb.retriever("hybrid")
    depth = max(HybridRetriever.DEFAULTS["depth"], HybridRetriever.DEFAULTS["depth_factor"] * 100)
    t0 = time.perf_counter()
    d = hyb.dense.search_batch(texts, depth)
    b = hyb.sparse.search_batch(texts, depth)
    t_lists = time.perf_counter() - t0

    def fused_row(fusion, w):
        t1 = time.perf_counter()
        idx, _ = fuse(d, b, 100, fusion=fusion, dense_weight=w)
        dt = t_lists + time.perf_counter() - t1
        m = compute_metrics(sub_qrels, run_from_indices(qids, idx, doc_ids), DEFAULT_METRICS, args.scorer)
        return {**m, "queries_per_second": round(len(qids) / dt, 2), "settings": {"fusion": fusion, "dense_weight": w}}

    rows["hybrid(rrf)"] = fused_row("rrf", 0.5)
    sweep = {w: fused_row("interpolate", w) for w in (float(x) for x in args.weights.split(","))}
    w_def = HybridRetriever.DEFAULTS["dense_weight"]
    rows[f"hybrid(interpolate w={w_def})"] = sweep.get(w_def) or fused_row("interpolate", w_def)

    print(f"\nSciFact {args.split}: {len(qids)} queries, {kb.chunks['doc_id'].nunique()} docs (scorer {args.scorer})")
    print(f"{'retriever':<30}" + "".join(f"{m:>11}" for m in DEFAULT_METRICS) + f"{'q/s':>10}")
    for name, r in rows.items():
        print(f"{name:<30}" + "".join(f"{r[m]:>11.4f}" for m in DEFAULT_METRICS) + f"{r['queries_per_second']:>10.1f}")
    print("\ninterpolation dense-weight sweep (train): " + "  ".join(f"{w}:{r['ndcg@10']:.4f}" for w, r in sweep.items()))
    best_single = max(rows["bm25"]["ndcg@10"], rows["dense"]["ndcg@10"])
    best_h = max(rows["hybrid(rrf)"]["ndcg@10"], rows[f"hybrid(interpolate w={w_def})"]["ndcg@10"])
    print(f"targets: bm25 {rows['bm25']['ndcg@10']:.4f} >= 0.66 {'OK' if rows['bm25']['ndcg@10'] >= 0.66 else 'MISS'}; "
          f"dense {rows['dense']['ndcg@10']:.4f} >= 0.62 {'OK' if rows['dense']['ndcg@10'] >= 0.62 else 'MISS'}; "
          f"hybrid {best_h:.4f} >= {best_single + 0.02:.4f} {'OK' if best_h >= best_single + 0.02 else 'MISS'}")
    result = {"kb_id": kb.kb_id, "split": args.split, "num_queries": len(qids), "rows": rows,
              "interpolate_sweep": {str(w): r for w, r in sweep.items()}}
    if args.output:
        atomic_write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
