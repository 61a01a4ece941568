"""Retrievers tuned on the KB's own questions, on SciFact (issue 17), side by side with the untuned parts.

SciFact here has qrels/train.tsv only (809 queries; BEIR's test split is withheld and never read). Its queries are
split deterministically (seeded hash of the query id) into train / val / held-out; everything is trained on
train, selected on val, and reported on held-out:
  - stock MiniLM dense vs the fine-tuned encoder (target >= +0.03 nDCG@10);
  - today's hybrid (dense weight 0.45) vs hybrid with the fine-tuned encoder and the weight tuned on val (>= +0.02);
  - the cross-encoder reranker's gain over its first stage, and its cost in queries/s;
  - the fine-tune's wall time (target <= 15 min for 809 questions: --time_809 trains on all 809 to time it).

    flock /tmp/nanochat-heavy.lock python -m bench.retriever_tuning [--work_dir /tmp/nanochat_bench/retriever_tuning]

Artifacts (KBs, the fine-tuned encoder, the reranker) are cached in --work_dir; a rerun with the same settings
only evaluates and re-prints the recorded training times.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from nanochat.common import atomic_write_json, print0
from nanochat.data.sources.beir import load_corpus, load_qrels, load_queries, query_rows
from nanochat.retrieval.evaluate import build_or_load_kb, compute_metrics, run_from_indices

DATA = Path("/work/shared/data/scifact")
SPLIT = {"train": 0.6, "val": 0.15, "heldout": 0.25}
METRICS = ("ndcg@10", "recall@10", "recall@100")


def scifact_rows(data: Path) -> list[dict]:
    """The train qrels' queries as query rows {id, question, doc_ids} (the only split this folder has)."""
    return query_rows(load_queries(data / "queries.jsonl"), load_qrels(data / "qrels" / "train.tsv"))


def score(retriever, kb, rows: list[dict], top_k: int = 100) -> dict:
    """Held-out metrics and queries/s of any retriever (search_batch over all rows, timed after a warm-up)."""
    from nanochat.retrieval.pairs import qrels_of
    questions, qids = [r["question"] for r in rows], [str(r["id"]) for r in rows]
    retriever.search_batch(questions[:1], top_k)
    t0 = time.perf_counter()
    idx, _ = retriever.search_batch(questions, top_k)
    dt = time.perf_counter() - t0
    run = run_from_indices(qids, idx, kb.chunks["doc_id"].astype(str).to_numpy())
    return {**compute_metrics(qrels_of(rows), run, METRICS, scorer="numpy"), "q/s": round(len(rows) / dt, 2)}


def score_reranked(first, reranker, kb, rows: list[dict], depth: int, top_k: int = 100) -> dict:
    """Held-out metrics of `first` reranked by the cross-encoder alone (weight 1) and with its val-tuned fusion
    weight, from one cross-encoder pass; q/s counts the first stage and that pass."""
    from nanochat.retrieval.kb import passage_texts
    from nanochat.retrieval.pairs import qrels_of
    from nanochat.retrieval.rerank import rerank_rows
    questions, qids = [r["question"] for r in rows], [str(r["id"]) for r in rows]
    texts, doc_ids = passage_texts(kb.chunks), kb.chunks["doc_id"].astype(str).to_numpy()
    first.search_batch(questions[:1], top_k)
    t0 = time.perf_counter()
    idx, sc = first.search_batch(questions, top_k)
    first_s = time.perf_counter() - t0
    cache = {}

    def scorer(pairs_, bs):
        if "logits" not in cache:
            t1 = time.perf_counter()
            cache["logits"] = reranker(pairs_, bs)
            cache["s"] = time.perf_counter() - t1
        return cache["logits"]
    out = {}
    for w in dict.fromkeys((1.0, reranker.weight)):
        ridx, _ = rerank_rows(scorer, questions, idx, sc, texts, depth, weight=w)
        out[w] = compute_metrics(qrels_of(rows), run_from_indices(qids, ridx, doc_ids), METRICS, scorer="numpy")
    qps = round(len(rows) / (first_s + cache.get("s", 0.0)), 2)
    return {w: {**m, "q/s": qps if w else round(len(rows) / first_s, 2)} for w, m in out.items()}


def cached(out_dir: Path, settings: dict, train_fn):
    """Reuse a trained model directory whose training.json records the same settings and data; else train."""
    rec_path = out_dir / "training.json"
    if rec_path.is_file():
        rec = json.loads(rec_path.read_text())
        if rec.get("bench_key") == settings:
            return rec, True
    rec = train_fn()
    rec["bench_key"] = settings
    atomic_write_json(rec_path, rec)  # training.json is outside the content hash
    return rec, False


def tuned_kb(docs, kb_dir: Path, model_dir: Path):
    """KB over the same passages embedded by the fine-tuned encoder (embeddings cached beside the KB)."""
    from nanochat.retrieval.embeddings import embedder_info, encode_texts, model_id
    from nanochat.retrieval.kb import passage_texts
    from nanochat.data.sources.beir import corpus_to_chunks
    from nanochat.data.chunking import chunks_to_frame
    emb_path = kb_dir.parent / f"{kb_dir.name}.embeddings.npy"
    side = emb_path.with_suffix(".json")
    mid = model_id(model_dir)
    t0 = time.perf_counter()
    if not (side.is_file() and json.loads(side.read_text()).get("model") == mid):
        texts = passage_texts(chunks_to_frame(corpus_to_chunks(docs)))
        emb = encode_texts(texts, str(model_dir), precision="fp32")
        np.save(emb_path, emb, allow_pickle=False)
        atomic_write_json(side, embedder_info(str(model_dir), "fp32"))
    encode_s = time.perf_counter() - t0
    kb, _ = build_or_load_kb(docs, kb_dir, ["bm25", "dense", "hybrid"], embeddings_path=emb_path)
    if (kb.manifest.get("embedding") or {}).get("model") != mid:  # same passages, older encoder: rebuild
        import shutil
        shutil.rmtree(kb_dir)
        kb, _ = build_or_load_kb(docs, kb_dir, ["bm25", "dense", "hybrid"], embeddings_path=emb_path)
    return kb, encode_s


def main(argv=None):
    from nanochat.cli import ArgumentParser
    from nanochat.data.queries import write_queries
    from nanochat.retrieval.finetune import finetune_embedder
    from nanochat.retrieval.hybrid import tune_fusion
    from nanochat.retrieval.pairs import split_queries
    from nanochat.retrieval.rerank import Reranker, train_reranker
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA), help="BEIR SciFact folder (corpus.jsonl, queries.jsonl, qrels/train.tsv)")
    p.add_argument("--work_dir", default="/tmp/nanochat_bench/retriever_tuning", help="cache of KBs and models")
    p.add_argument("--seed", type=int, default=0, help="split and training seed")
    p.add_argument("--epochs", type=int, default=1, help="embedder epochs")
    p.add_argument("--batch_size", type=int, default=32, help="embedder batch")
    p.add_argument("--lr", type=float, default=2e-5, help="embedder learning rate")
    p.add_argument("--hard_negatives", type=int, default=1, help="mined negatives per question")
    p.add_argument("--train_seq_length", type=int, default=0, help="embedder tokens per passage in training (0 = model's)")
    p.add_argument("--rerank", default="true", choices=["true", "false"], help="train and score the reranker")
    p.add_argument("--rerank_epochs", type=int, default=1, help="reranker epochs")
    p.add_argument("--rerank_hard_negatives", type=int, default=1, help="reranker mined negatives per question")
    p.add_argument("--rerank_lr", type=float, default=2e-5, help="reranker body learning rate")
    p.add_argument("--rerank_max_length", type=int, default=256, help="reranker tokens per pair")
    p.add_argument("--rerank_depth", type=int, default=20, help="first-stage hits reranked")
    p.add_bool("--time_809", default=False, help="also fine-tune on all 809 questions (1 run, timing only)")
    p.add_argument("--output", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    docs = load_corpus(data / "corpus.jsonl")
    rows = scifact_rows(data)
    splits = split_queries(rows, SPLIT, seed=args.seed)
    ids = {s: {r["id"] for r in v} for s, v in splits.items()}
    assert not (ids["heldout"] & (ids["train"] | ids["val"])) and not (ids["train"] & ids["val"]), "split overlap"
    for s, v in splits.items():
        write_queries(work / f"queries_{s}.jsonl", v)
    train, val, heldout = splits["train"], splits["val"], splits["heldout"]
    print0(f"SciFact train qrels: {len(rows)} questions -> train {len(train)}, val {len(val)}, held-out {len(heldout)} "
           f"(seeded hash of the id, seed {args.seed}); {len(docs)} passages")

    t0 = time.perf_counter()
    kb0, reused = build_or_load_kb(docs, work / "kb_stock", ["bm25", "dense", "hybrid"])
    print0(f"stock KB {'reused' if reused else 'built'} in {time.perf_counter() - t0:.0f}s (kb_id {kb0.kb_id[:12]})")
    res = {}
    res["bm25"] = score(kb0.retriever("bm25"), kb0, heldout)
    res["dense stock"] = score(kb0.retriever("dense"), kb0, heldout)
    res["hybrid stock w=0.45"] = score(kb0.retriever("hybrid", dense_weight=0.45), kb0, heldout)
    fus0 = tune_fusion(kb0, val)  # learned fusion alone (stock encoder)
    res[f"hybrid stock w={fus0['dense_weight']} (val)"] = score(kb0.retriever("hybrid", dense_weight=fus0["dense_weight"]), kb0, heldout)

    ft_settings = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                   "hard_negatives": args.hard_negatives, "train_seq_length": args.train_seq_length, "seed": args.seed,
                   "train": sorted(ids["train"]), "val": sorted(ids["val"]), "kb": kb0.kb_id}
    rec, reused = cached(work / "embedder", ft_settings, lambda: finetune_embedder(
        kb0, train, val, work / "embedder", epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        hard_negatives=args.hard_negatives, train_seq_length=args.train_seq_length, seed=args.seed))
    print0(f"fine-tune {'reused' if reused else 'ran'}: val nDCG@10 by epoch {rec['val_by_epoch']} -> epoch "
           f"{rec['selected_epoch']}; {rec['data']['examples']} examples, {rec['wall_seconds']}s wall")
    kb1, encode_s = tuned_kb(docs, work / "kb_tuned", work / "embedder")
    res["dense fine-tuned"] = score(kb1.retriever("dense"), kb1, heldout)
    res["hybrid fine-tuned w=0.45"] = score(kb1.retriever("hybrid", dense_weight=0.45), kb1, heldout)
    fus1 = tune_fusion(kb1, val)
    w1 = fus1["dense_weight"]
    best_hybrid = f"hybrid fine-tuned w={w1} (val)"
    res[best_hybrid] = score(kb1.retriever("hybrid", dense_weight=w1), kb1, heldout)

    rr = None
    if args.rerank == "true":
        rr_settings = {"epochs": args.rerank_epochs, "hard_negatives": args.rerank_hard_negatives, "seed": args.seed,
                       "lr": args.rerank_lr, "max_length": args.rerank_max_length, "loss": "lce", "fusion": "rrf",
                       "train": sorted(ids["train"]), "val": sorted(ids["val"]), "kb": kb0.kb_id}
        rr, rr_reused = cached(work / "reranker", rr_settings, lambda: train_reranker(
            kb0, train, val, work / "reranker", epochs=args.rerank_epochs, lr=args.rerank_lr,
            max_length=args.rerank_max_length, hard_negatives=args.rerank_hard_negatives, seed=args.seed))
        print0(f"reranker {'reused' if rr_reused else 'trained'}: val nDCG@10 {rr['val_by_epoch']} (epoch 0 = "
               f"candidates' order) -> epoch {rr['selected_epoch']}; {rr['wall_seconds']}s wall")
        reranker = Reranker(work / "reranker")
        rw = reranker.weight
        for name, kb_, first in ((best_hybrid, kb1, kb1.retriever("hybrid", dense_weight=w1)),
                                 ("bm25", kb0, kb0.retriever("bm25"))):
            got = score_reranked(first, reranker, kb_, heldout, args.rerank_depth)
            res[f"{name} + cross-encoder top {args.rerank_depth}"] = got[1.0]
            if rw != 1.0:
                res[f"{name} + rerank top {args.rerank_depth}, fused w={rw} (val)"] = got[rw]

    t809 = None
    if args.time_809:
        t_settings = {**ft_settings, "train": "all 809", "val": None}
        t809, _ = cached(work / "embedder_809", t_settings, lambda: finetune_embedder(
            kb0, rows, [], work / "embedder_809", epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            hard_negatives=args.hard_negatives, train_seq_length=args.train_seq_length, seed=args.seed))

    print0(f"\nSciFact held-out train queries ({len(heldout)}), trained on {len(train)}, selected on {len(val)}")
    print0(f"{'retriever':<46}" + "".join(f"{m:>11}" for m in METRICS) + f"{'q/s':>9}")
    for name, r in res.items():
        print0(f"{name:<46}" + "".join(f"{r[m]:>11.4f}" for m in METRICS) + f"{r['q/s']:>9}")
    d_gain = res["dense fine-tuned"]["ndcg@10"] - res["dense stock"]["ndcg@10"]
    h_gain = res[best_hybrid]["ndcg@10"] - res["hybrid stock w=0.45"]["ndcg@10"]
    print0(f"\nfine-tuned dense vs stock MiniLM:        {d_gain:+.4f} nDCG@10 (target >= +0.03) "
           f"{'OK' if d_gain >= 0.03 else 'MISSED'}")
    print0(f"hybrid fine-tuned, w={w1} vs hybrid 0.45: {h_gain:+.4f} nDCG@10 (target >= +0.02) "
           f"{'OK' if h_gain >= 0.02 else 'MISSED'}")
    print0(f"hybrid weight tuned on val: stock {fus0['dense_weight']}, fine-tuned {w1} (curve: {fus1['tuned']['scores']})")
    if rr is not None:
        ce = res[f"{best_hybrid} + cross-encoder top {args.rerank_depth}"]
        fused = res.get(f"{best_hybrid} + rerank top {args.rerank_depth}, fused w={rw} (val)", ce)
        print0(f"reranker over the best hybrid: cross-encoder alone {ce['ndcg@10'] - res[best_hybrid]['ndcg@10']:+.4f}, "
               f"fused with the val-tuned weight {rw}: {fused['ndcg@10'] - res[best_hybrid]['ndcg@10']:+.4f} nDCG@10; "
               f"{ce['q/s']} q/s with the cross-encoder (first stage alone {res[best_hybrid]['q/s']} q/s); "
               f"training {rr['wall_seconds']}s; val fusion curve {rr['fusion']['val_by_weight']}")
    n_train = rec["data"]["train_questions"]
    print0(f"fine-tune wall time: {rec['wall_seconds']:.0f}s for {n_train} questions x {args.epochs} epoch(s) "
           f"(training {rec['train_seconds']}s, rest = mining + val); re-embedding the corpus {encode_s:.0f}s "
           f"{'(cached)' if encode_s < 5 else ''}")
    if t809 is not None:
        print0(f"fine-tune on all {t809['data']['train_questions']} questions: {t809['wall_seconds']:.0f}s "
               f"(target <= 900s) {'OK' if t809['wall_seconds'] <= 900 else 'MISSED'}")
    if args.output:
        atomic_write_json(args.output, {"results": res, "fusion_stock": fus0, "fusion_tuned": fus1,
                                        "finetune": rec, "reranker": rr, "finetune_809": t809})
    return res


if __name__ == "__main__":
    main()
