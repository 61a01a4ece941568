"""Dense encoding speed: fp32 vs bf16 autocast (vs fp16 on CUDA) at the same batch size.

    python -m bench.dense_speed [--passages 128 --batch_size 32 --queries 200] [--ndcg --cache_dir DIR]

Reports passages/s (SciFact abstracts, ~250 tokens), cosine agreement of each precision with
fp32, and queries/s (encode + FAISS search). With --ndcg it also embeds the whole SciFact corpus
at each precision and reports nDCG@10 on train (slow on CPU: hours where bf16 is emulated).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from nanochat.embeddings import cpu_has_fast_bf16, encode_texts, load_model

DATA = Path("/work/shared/data/scifact")


def timed_encode(texts, precision, batch_size, device):
    encode_texts(texts[:batch_size], precision=precision, batch_size=batch_size, device=device, show_progress=False)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    vecs = encode_texts(texts, precision=precision, batch_size=batch_size, device=device, show_progress=False)
    if device == "cuda":
        torch.cuda.synchronize()
    return vecs, time.perf_counter() - t0


def ndcg_for(precision, docs, queries, qrels, cache_dir, batch_size, device):
    import faiss
    from nanochat.retrieval_eval import compute_metrics, run_from_indices
    cache = Path(cache_dir) / f"scifact_{precision}.npy"
    if cache.is_file():
        emb = np.load(cache, allow_pickle=False)
    else:
        emb = encode_texts([f"{d['title']}\n{d['content']}" if d["title"] else d["content"] for d in docs],
                           precision=precision, batch_size=batch_size, device=device)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, emb, allow_pickle=False)
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    qids = [q for q in qrels if q in queries]
    qv = encode_texts([queries[q] for q in qids], precision=precision, device=device, show_progress=False)
    _, idx = index.search(qv, 10)
    run = run_from_indices(qids, idx, np.array([d["id"] for d in docs]))
    return compute_metrics({q: qrels[q] for q in qids}, run, ["ndcg@10"], "numpy")["ndcg@10"]


def main(argv=None):
    from nanochat.beir import load_corpus, load_qrels, load_queries
    from nanochat.cli import ArgumentParser
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--passages", type=int, default=128, help="SciFact passages to encode per precision")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--queries", type=int, default=200, help="queries for the queries/s figure")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precisions", default=None, help="comma list (default: fp32,bf16 on CPU; fp32,bf16,fp16 on CUDA)")
    p.add_argument("--ndcg", action="store_true", help="also nDCG@10 on SciFact train per precision (embeds the corpus)")
    p.add_argument("--cache_dir", default="/tmp/nanochat_bench/dense_speed", help="corpus embedding cache for --ndcg")
    args = p.parse_args(argv)

    docs = load_corpus(DATA / "corpus.jsonl")
    queries, qrels = load_queries(DATA / "queries.jsonl"), load_qrels(DATA / "qrels" / "train.tsv")
    texts = [f"{d['title']}\n{d['content']}" for d in docs[:args.passages]]
    precisions = args.precisions.split(",") if args.precisions else (["fp32", "bf16", "fp16"] if args.device == "cuda" else ["fp32", "bf16"])
    model = load_model(device=args.device)
    n_tok = [len(model.tokenizer(t, truncation=True, max_length=model.max_seq_length)["input_ids"]) for t in texts]
    print(f"device {args.device} | torch threads {torch.get_num_threads()} | cpu native bf16: {cpu_has_fast_bf16()} | "
          f"{len(texts)} passages, mean {np.mean(n_tok):.0f} tokens (max_seq_length {model.max_seq_length}) | batch {args.batch_size}")

    import faiss
    index = faiss.IndexFlatIP(model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else 384)
    index.add(np.random.default_rng(0).standard_normal((5183, index.d)).astype(np.float32))
    qtexts = list(queries.values())[:args.queries]
    rows, ref = {}, None
    for prec in precisions:
        vecs, dt = timed_encode(texts, prec, args.batch_size, args.device)
        ref = vecs if ref is None else ref
        cos = np.sum(vecs * ref, axis=1)
        t0 = time.perf_counter()
        qv = encode_texts(qtexts, precision=prec, batch_size=64, device=args.device, show_progress=False)
        index.search(qv, 10)
        qps = len(qtexts) / (time.perf_counter() - t0)
        rows[prec] = {"passages_per_s": len(texts) / dt, "cos_min": float(cos.min()), "cos_mean": float(cos.mean()), "queries_per_s": qps}
        if args.ndcg:
            rows[prec]["ndcg@10"] = ndcg_for(prec, docs, queries, qrels, args.cache_dir, args.batch_size, args.device)
    print(f"{'precision':<10}{'passages/s':>12}{'speedup':>9}{'cos min':>10}{'cos mean':>10}{'queries/s':>11}" + (f"{'nDCG@10':>9}" if args.ndcg else ""))
    for prec, r in rows.items():
        print(f"{prec:<10}{r['passages_per_s']:>12.1f}{r['passages_per_s'] / rows['fp32']['passages_per_s']:>8.2f}x"
              f"{r['cos_min']:>10.5f}{r['cos_mean']:>10.5f}{r['queries_per_s']:>11.1f}" + (f"{r['ndcg@10']:>9.4f}" if args.ndcg else ""))
    return rows


if __name__ == "__main__":
    main()
