"""Dense encoding speed: fp32 vs int8 dynamic quantization vs bf16 autocast (vs fp16 on CUDA), same batch size.

    python -m bench.dense_speed [--passages 128 --batch_size 32 --queries 200] [--ndcg --work_dir DIR]

Reports passages/s (SciFact abstracts, ~250 tokens) against sentence-transformers' own default
path (`SentenceTransformer.encode`, fp32, same batch size: row "st-fp32"), cosine agreement of each
precision with fp32, and queries/s (encode + FAISS search). With --ndcg it also embeds the whole
SciFact corpus per precision (cached under --work_dir) and reports nDCG@10 on train; emulated bf16
(no native bf16 on the CPU) is skipped there unless named in --ndcg_precisions (hours on 2 cores).

ONNX Runtime (issue #3) was measured and NOT adopted: it does not reach the 2x asked for on this CPU
(AMD EPYC, AVX2, no VNNI, 2 cores). onnxruntime 1.32.0, MiniLM transformer exported with torch.onnx.export
(opset 17, dynamic batch/seq axes), ORT_ENABLE_ALL, intra_op 2 threads, mean pooling + L2 norm in numpy;
int8 = onnxruntime.quantization.quantize_dynamic (QInt8 weights per channel). 96 SciFact passages, batch 32:
    precision   passages/s  speedup   cos min  cos mean  queries/s
    st-fp32           20.9    1.00x   1.00000   1.00000      199.4
    fp32              21.0    1.01x   1.00000   1.00000      200.5
    int8              26.7    1.28x   0.99004   0.99341      278.5
    onnx-fp32         19.3    0.92x   1.00000   1.00000      178.9
    onnx-int8         25.9    1.24x   0.99059   0.99340      261.3
onnx-int8 nDCG@10, full SciFact train (5,183 passages, 809 queries): 0.6585 vs fp32 0.6602 (-0.0017).
Fusing attention/LayerNorm/GELU with onnxruntime.transformers.optimizer before quantizing: +3% (24.9 vs 24.1).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from nanochat.retrieval.embeddings import cpu_has_fast_bf16, encode_texts, load_model, resolve_precision

DATA = Path("/work/shared/data/scifact")


def timed_encode(texts, precision, batch_size, device):
    if precision == "st-fp32":  # the library's default path: what the speed-up is measured against
        model = load_model(device=device)
        enc = lambda t: model.encode(t, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,  # noqa: E731
                                     show_progress_bar=False).astype(np.float32)
    else:
        enc = lambda t: encode_texts(t, precision=precision, batch_size=batch_size, device=device, show_progress=False)  # noqa: E731
    enc(texts[:batch_size])  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    vecs = enc(texts)
    if device == "cuda":
        torch.cuda.synchronize()
    return vecs, time.perf_counter() - t0


def ndcg_for(precision, docs, queries, qrels, work_dir, batch_size, device):
    """SciFact train nDCG@10 with passages AND queries encoded at `precision` (cached corpus embeddings)."""
    import faiss
    from nanochat.common import atomic_path
    from nanochat.retrieval.evaluate import compute_metrics, run_from_indices
    cache = Path(work_dir) / f"scifact_{len(docs)}_{precision}.npy"
    if cache.is_file():
        emb = np.load(cache, allow_pickle=False)
    else:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:  # an interrupted run leaves no half-written cache
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(docs), 384))
            encode_texts([f"{d['title']}\n{d['content']}" if d["title"] else d["content"] for d in docs],
                         precision=precision, batch_size=batch_size, device=device, out=mm)
            mm.flush()
            del mm
        emb = np.load(cache, allow_pickle=False)
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    qids = [q for q in qrels if q in queries]
    qv = encode_texts([queries[q] for q in qids], precision=precision, device=device, show_progress=False)
    _, idx = index.search(qv, 10)
    run = run_from_indices(qids, idx, np.array([d["id"] for d in docs]))
    return compute_metrics({q: qrels[q] for q in qids}, run, ["ndcg@10"], "numpy")["ndcg@10"]


def subsample(docs, qrels, n, seed=0):
    """Passages relevant to train queries (queries with all relevant passages kept) + random others, up to n."""
    relevant = sorted({d for rels in qrels.values() for d in rels})
    keep = set(relevant[:n])
    others = [d["id"] for d in docs if d["id"] not in keep]
    rng = np.random.default_rng(seed)
    keep |= set(rng.permutation(others)[:max(0, n - len(keep))].tolist())
    return [d for d in docs if d["id"] in keep], {q: r for q, r in qrels.items() if set(r) <= keep}


def main(argv=None):
    from nanochat.data.sources.beir import load_corpus, load_qrels, load_queries
    from nanochat.cli import ArgumentParser
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--passages", type=int, default=128, help="SciFact passages to encode per precision")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--queries", type=int, default=200, help="queries for the queries/s figure")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precisions", default=None, help="comma list (default: st-fp32,fp32,int8,bf16 on CPU; st-fp32,fp32,bf16,fp16 on CUDA)")
    p.add_argument("--ndcg", action="store_true", help="also nDCG@10 on SciFact train per precision (embeds the corpus)")
    p.add_argument("--ndcg_precisions", default=None, help="comma list for --ndcg (default: all but st-fp32 and emulated bf16)")
    p.add_argument("--ndcg_docs", type=int, default=0,
                   help="score on a subsample: the train queries' relevant passages plus random others up to this many (0: all 5183)")
    p.add_argument("--work_dir", "--cache_dir", dest="work_dir", default="/tmp/nanochat_bench/dense_speed",
                   help="corpus embedding cache for --ndcg")
    args = p.parse_args(argv)

    docs = load_corpus(DATA / "corpus.jsonl")
    queries, qrels = load_queries(DATA / "queries.jsonl"), load_qrels(DATA / "qrels" / "train.tsv")
    texts = [f"{d['title']}\n{d['content']}" for d in docs[:args.passages]]
    cuda = args.device.startswith("cuda")
    precisions = args.precisions.split(",") if args.precisions else \
        (["st-fp32", "fp32", "bf16", "fp16"] if cuda else ["st-fp32", "fp32", "int8", "bf16"])
    if args.ndcg_precisions:
        ndcg_precs = set(args.ndcg_precisions.split(","))
    else:
        ndcg_precs = {p for p in precisions if p != "st-fp32" and not (p == "bf16" and not cuda and not cpu_has_fast_bf16())}
    model = load_model(device=args.device)
    full = [len(ids) for ids in model.tokenizer([f"{d['title']}\n{d['content']}" for d in docs])["input_ids"]]
    n_tok = [min(n, model.max_seq_length) for n in full[:args.passages]]
    print(f"device {args.device} | torch threads {torch.get_num_threads()} | cpu native bf16: {cpu_has_fast_bf16()} | "
          f"auto -> {resolve_precision('auto', torch.device(args.device))} | {len(texts)} passages, mean {np.mean(n_tok):.0f} "
          f"tokens after truncation | batch {args.batch_size}")
    print(f"truncation: {np.mean(np.array(full) > model.max_seq_length):.1%} of all {len(docs)} SciFact passages exceed "
          f"max_seq_length {model.max_seq_length} word pieces (median {np.median(full):.0f}, p90 {np.percentile(full, 90):.0f})")

    import faiss
    index = faiss.IndexFlatIP(model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else 384)
    index.add(np.random.default_rng(0).standard_normal((5183, index.d)).astype(np.float32))
    qtexts = list(queries.values())[:args.queries]
    rows, ref = {}, None
    for prec in precisions:
        vecs, dt = timed_encode(texts, prec, args.batch_size, args.device)
        ref = vecs if ref is None else ref
        cos = np.sum(vecs * ref, axis=1)
        qprec = "fp32" if prec == "st-fp32" else prec
        encode_texts(qtexts[:8], precision=qprec, device=args.device, show_progress=False)  # warm-up
        t0 = time.perf_counter()
        qv = encode_texts(qtexts, precision=qprec, batch_size=64, device=args.device, show_progress=False)
        index.search(qv, 10)
        qps = len(qtexts) / (time.perf_counter() - t0)
        rows[prec] = {"passages_per_s": len(texts) / dt, "cos_min": float(cos.min()), "cos_mean": float(cos.mean()), "queries_per_s": qps}
        print(f"  {prec}: {rows[prec]['passages_per_s']:.1f} passages/s", flush=True)
    if args.ndcg and args.ndcg_docs:
        docs, qrels = subsample(docs, qrels, args.ndcg_docs)
        print(f"nDCG on a subsample: {len(docs)} passages, {len(qrels)} train queries")
    if args.ndcg:
        for prec in rows:
            if prec in ndcg_precs:
                rows[prec]["ndcg@10"] = ndcg_for(prec, docs, queries, qrels, args.work_dir, args.batch_size, args.device)
    base = rows.get("st-fp32", rows.get("fp32", next(iter(rows.values()))))["passages_per_s"]
    print(f"{'precision':<10}{'passages/s':>12}{'speedup':>9}{'cos min':>10}{'cos mean':>10}{'queries/s':>11}" + (f"{'nDCG@10':>9}" if args.ndcg else ""))
    for prec, r in rows.items():
        nd = (f"{r['ndcg@10']:>9.4f}" if "ndcg@10" in r else f"{'-':>9}") if args.ndcg else ""
        print(f"{prec:<10}{r['passages_per_s']:>12.1f}{r['passages_per_s'] / base:>8.2f}x"
              f"{r['cos_min']:>10.5f}{r['cos_mean']:>10.5f}{r['queries_per_s']:>11.1f}" + nd)
    print("speedup: vs st-fp32 (SentenceTransformer.encode, fp32, same batch size); cosine: vs the first row")
    return rows


if __name__ == "__main__":
    main()
