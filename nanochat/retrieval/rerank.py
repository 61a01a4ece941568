"""A cross-encoder reranker, initialised from the KB's MiniLM weights (a new one-logit head) and trained on the same
(question, gold passage, hard negatives) examples as the dense fine-tune; it reorders the top `depth` hits of
any retriever and never adds or drops one.

    python -m nanochat.retrieval.rerank --knowledge_base results/kb/x/stock --train q_train.jsonl --val q_val.jsonl \
        --output results/kb/x/reranker [--epochs 1 --batch_size 16 --lr 2e-5 --hard_negatives 1]

Loss: sentence-transformers' cross-encoder MultipleNegativesRankingLoss (softmax over the gold passage, the hard
negatives and a few in-batch negatives). Selection on val, over the val questions' BM25 + dense candidates: the
epoch, and the weight of a reciprocal-rank fusion of the cross-encoder's order with the first stage's
(rerank.json: 1 = the cross-encoder's order, 0 = the first stage's, which then skips the cross-encoder). A
cross-encoder trained on a few hundred questions is weaker than a tuned first stage on its own; the fusion keeps
what it adds and nothing else, and epoch 0 (the first stage's order) is what it has to beat.
In a run, `rerank: {depth: N}` applies it inside precompute (training and evaluation read the same ranking).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from nanochat.common import print0
from nanochat.retrieval import pairs
from nanochat.retrieval.base import Retriever
from nanochat.retrieval.finetune import VAL_METRIC, add_training_args, query_files_sha256, save_model_dir, \
    train_with_selection

log = logging.getLogger(__name__)
DEFAULTS = {"epochs": 1, "batch_size": 16, "lr": 2e-5, "head_lr": 1e-3, "hard_negatives": 1, "max_length": 256,
            "warmup": 0.1, "depth": 30, "seed": 0, "val_depth": 20}
FUSION_FILE = "rerank.json"  # in the model directory, inside its content hash: how its order meets the first stage's
RRF_K = 10
WEIGHT_GRID = tuple(round(0.1 * i, 1) for i in range(11))


def load_cross_encoder(model_name: str, device, max_length: int = 256):
    """CrossEncoder over a local sentence-transformers directory (a bi-encoder is converted: new head)."""
    import os
    from sentence_transformers import CrossEncoder
    from nanochat.retrieval.embeddings import resolve_model_path
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return CrossEncoder(str(resolve_model_path(model_name)), num_labels=1, max_length=max_length, device=str(device),
                        local_files_only=True)


def fused_order(logits: np.ndarray, weight: float, k: int = RRF_K) -> tuple[np.ndarray, np.ndarray]:
    """(order, score) of one row's head, best first: weight / (k + cross-encoder rank) + (1 - weight) / (k + first-stage
    rank). Ties keep the first-stage order; weight 1 is the cross-encoder's order and its scores are the logits."""
    n = len(logits)
    ce_rank = np.empty(n)
    ce_rank[np.argsort(-logits, kind="stable")] = np.arange(n)
    fused = weight / (k + ce_rank) + (1 - weight) / (k + np.arange(n))
    order = np.argsort(-fused, kind="stable")
    return order, (logits if weight == 1 else fused)[order].astype(np.float32)


def rerank_rows(scorer, queries: list[str], idx: np.ndarray, scores: np.ndarray, texts: list[str], depth: int,
                batch_size: int = 64, weight: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Reorder the first `depth` hits of each row (Q, k) by scorer(pairs) -> logits, fused with the first stage's
    order by `weight` (fused_order); hits below stay as they were. weight 0 returns the rows untouched (no scoring).

    The reranked part is a permutation of the hits it was given; their scores become the fused scores.
    """
    idx, scores = np.array(idx, copy=True), np.array(scores, dtype=np.float32, copy=True)
    if weight == 0:
        return idx, scores
    spans = []
    for r in range(idx.shape[0]):
        head = [c for c in range(min(depth, idx.shape[1])) if idx[r, c] >= 0]
        spans.append(head)
    flat = [(queries[r], texts[idx[r, c]]) for r, head in enumerate(spans) for c in head]
    logits = np.asarray(scorer(flat, batch_size), dtype=np.float32).reshape(-1) if flat else np.zeros(0, np.float32)
    pos = 0
    for r, head in enumerate(spans):
        order, fused = fused_order(logits[pos:pos + len(head)], weight)
        pos += len(head)
        cols = np.asarray(head, dtype=np.int64)
        idx[r, cols] = idx[r, cols[order]]
        scores[r, cols] = fused
    return idx, scores


class Reranker:
    """A trained cross-encoder directory (python -m nanochat.retrieval.rerank) ready to score pairs."""

    def __init__(self, model_dir, device=None, batch_size: int = 64, weight: float | None = None):
        from nanochat.common import resolve_device
        from nanochat.retrieval.embeddings import model_id
        self.model_dir, self.batch_size = str(model_dir), batch_size
        self.id = model_id(self.model_dir)
        fusion = Path(model_dir) / FUSION_FILE
        self.weight = float(weight if weight is not None else
                            json.loads(fusion.read_text())["weight"] if fusion.is_file() else 1.0)
        if self.weight == 0:
            log.warning("%s: the cross-encoder did not beat its first stage on val (fusion weight 0), so reranking "
                        "keeps the first-stage order and costs nothing; more questions or epochs may change that",
                        model_dir)
        self.model = load_cross_encoder(self.model_dir, resolve_device(device))
        self.model.eval()

    def __call__(self, pairs_: list[tuple[str, str]], batch_size: int | None = None) -> np.ndarray:
        with torch.inference_mode():
            return self.model.predict(pairs_, batch_size=batch_size or self.batch_size, show_progress_bar=False,
                                      activation_fn=torch.nn.Identity(), convert_to_numpy=True)


class RerankedRetriever(Retriever):
    """Any retriever's top max(depth, top_k), its first `depth` reordered by a Reranker, cut to top_k."""

    name = "reranked"

    def __init__(self, first_stage: Retriever, reranker: Reranker, texts: list[str], depth: int = 20):
        if depth < 1:
            raise ValueError(f"rerank depth must be >= 1, got {depth}")
        self.first_stage, self.reranker, self.texts, self.depth = first_stage, reranker, texts, depth

    def search_batch(self, queries: list[str], top_k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = list(queries)
        idx, scores = self.first_stage.search_batch(queries, max(top_k, self.depth))
        idx, scores = rerank_rows(self.reranker, queries, idx, scores, self.texts, self.depth,
                                  weight=getattr(self.reranker, "weight", 1.0))
        return idx[:, :top_k], scores[:, :top_k]


def train_reranker(kb, train_rows: list[dict], val_rows: list[dict], output_dir, model: str | None = None,
                   epochs: int = 1, batch_size: int = 16, lr: float = 2e-5, head_lr: float = 1e-3, hard_negatives: int = 1,
                   max_length: int = 256, warmup: float = 0.1, depth: int = 30, val_depth: int = 20, seed: int = 0,
                   device=None, query_files: dict | None = None, show_progress: bool = True) -> dict:
    """Train, select on val (reranking val candidates), save; returns the record (also output_dir/training.json)."""
    from sentence_transformers.cross_encoder.losses import MultipleNegativesRankingLoss
    from nanochat.common import resolve_device
    from nanochat.retrieval.embeddings import model_id, model_location
    from nanochat.retrieval.kb import passage_texts
    t_start = time.perf_counter()
    if not train_rows:
        raise ValueError("no training questions: the reranker needs questions with gold doc_ids")
    if epochs < 1:
        raise ValueError(f"epochs={epochs}: a reranker's head starts random, it needs at least one epoch")
    device = resolve_device(device)
    base = model or model_location(kb.manifest.get("embedding") or {})
    texts = passage_texts(kb.chunks)
    doc_ids = kb.chunks["doc_id"].astype(str).to_numpy()
    train_lists = pairs.candidate_lists(kb, [r["question"] for r in train_rows], depth)
    examples = pairs.build_examples(kb, train_rows, train_lists, hard_negatives, texts)
    if not examples:
        raise ValueError(f"none of the {len(train_rows)} training questions has a gold doc_id found in {kb.path}")
    val_q = [r["question"] for r in val_rows]
    val_qids = [str(r["id"]) for r in val_rows]
    val_cands = _merged_candidates(pairs.candidate_lists(kb, val_q, val_depth), val_depth) if val_rows else None
    val_qrels = pairs.qrels_of(val_rows)
    torch.manual_seed(seed)  # the new head's initialisation
    ce = load_cross_encoder(base, device, max_length)
    loss = MultipleNegativesRankingLoss(ce, num_negatives=min(4, batch_size - 1), scale=1.0,
                                        activation_fn=torch.nn.Identity())  # softmax over raw logits (LCE)
    state = {"epoch": 0, "fusion": []}  # fusion: per epoch, the val score of every weight

    def batch_inputs(epoch: int):
        plan = []
        for b in pairs.batches(examples, batch_size, doc_ids, seed + epoch):
            n_neg = min(len(ex.negatives) for ex in b)
            cols = [[ex.query for ex in b], [texts[ex.positive] for ex in b]]
            cols += [[texts[ex.negatives[j]] for ex in b] for j in range(n_neg)]
            plan.append(cols)
        return plan

    def evaluate():
        if val_cands is None:
            state["fusion"].append({})
            return None
        if state["epoch"] == 0:  # before training: the first-stage order (the head is still random)
            state["epoch"] += 1
            first = pairs.ranking_score(val_qids, val_cands, doc_ids, val_qrels, VAL_METRIC)
            state["fusion"].append({0.0: first})
            return first
        ce.eval()
        cache = {}

        def scorer(p, bs):  # one cross-encoder pass per epoch, re-fused for every weight
            if "logits" not in cache:
                with torch.inference_mode():
                    cache["logits"] = ce.predict(p, batch_size=bs, show_progress_bar=False,
                                                 activation_fn=torch.nn.Identity(), convert_to_numpy=True)
            return cache["logits"]
        curve = {}
        for w in WEIGHT_GRID:
            idx, _ = rerank_rows(scorer, val_q, val_cands, np.zeros(val_cands.shape, np.float32), texts, val_depth,
                                 weight=w)
            curve[w] = pairs.ranking_score(val_qids, idx, doc_ids, val_qrels, VAL_METRIC)
        state["fusion"].append(curve)
        return max(curve.values())

    log_ = train_with_selection(ce, lambda cols: loss(cols, None), batch_inputs, epochs, lr, warmup, evaluate, seed,
                                desc="train reranker", show_progress=show_progress, keep_start=False,
                                head=("classifier", head_lr))
    record = {"kind": "cross-encoder", "base_model": model_id(base), "loss": "cross_encoder.MultipleNegativesRankingLoss",
              "settings": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "head_lr": head_lr,
                           "hard_negatives": hard_negatives, "max_length": max_length, "warmup": warmup, "depth": depth, "val_depth": val_depth,
                           "seed": seed, "device": str(device)},
              "data": {"kb_id": kb.kb_id, "train_questions": len(train_rows), "val_questions": len(val_rows),
                       "examples": len(examples), "queries_sha256": query_files_sha256(query_files or {})},
              "val_metric": VAL_METRIC, "val_note": "epoch 0 = the BM25+dense candidates' own order", **log_}
    curve = state["fusion"][record["selected_epoch"]]
    # the weight with the best val score; ties go to the lower weight (0: the first stage, no cross-encoder cost)
    weight = min(curve, key=lambda w: (-round(curve[w], 10), w)) if curve else 1.0
    record["fusion"] = {"weight": weight, "rrf_k": RRF_K, "val_by_weight": {str(w): round(v, 5) for w, v in curve.items()}}
    record["val_cross_encoder_only_by_epoch"] = [round(c[1.0], 5) if 1.0 in c else None for c in state["fusion"]]
    record["beats_first_stage"] = None if not curve else weight > 0
    if record["beats_first_stage"] is False:
        log.warning("the cross-encoder does not improve on its BM25+dense candidates' own order on val (cross-encoder "
                    "alone: nDCG@10 %s vs %.4f): fusion weight 0, so reranking with it keeps the first-stage order",
                    record["val_cross_encoder_only_by_epoch"][record["selected_epoch"]], record["val_by_epoch"][0])
    record["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    return save_model_dir(ce, output_dir, record, {FUSION_FILE: {"weight": weight, "rrf_k": RRF_K}})


def _merged_candidates(lists: dict[str, np.ndarray], depth: int) -> np.ndarray:
    """(Q, depth) rows: the sources interleaved best-first without repeats (what a hybrid first stage offers)."""
    srcs = list(lists.values())
    out = np.full((srcs[0].shape[0], depth), -1, np.int64)
    for q in range(out.shape[0]):
        merged = list(dict.fromkeys(i for i in pairs._interleave([[int(x) for x in s[q] if x >= 0] for s in srcs])))
        out[q, :min(depth, len(merged))] = merged[:depth]
    return out


def main(argv=None) -> int:
    from nanochat.cli import ArgumentParser, output_dir
    from nanochat.data.queries import load_queries
    from nanochat.retrieval.kb import KnowledgeBase
    p = ArgumentParser(description="Train a cross-encoder reranker on the KB's questions (selected on val).")
    add_training_args(p, DEFAULTS)
    p.add_argument("--max_length", type=int, default=DEFAULTS["max_length"], help="tokens per question + passage pair")
    p.add_argument("--head_lr", type=float, default=DEFAULTS["head_lr"], help="learning rate of the new classifier head")
    p.add_argument("--val_depth", type=int, default=DEFAULTS["val_depth"], help="candidates reranked per val question")
    p.add_argument("--output", type=output_dir, required=True, help="directory for the cross-encoder")
    args = p.parse_args(argv)
    kb = KnowledgeBase.load(args.knowledge_base)
    train = load_queries(args.train)
    val = load_queries(args.val) if args.val else []
    rec = train_reranker(kb, train, val, args.output, model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, head_lr=args.head_lr, hard_negatives=args.hard_negatives, max_length=args.max_length, warmup=args.warmup,
                         depth=args.depth, val_depth=args.val_depth, seed=args.seed, device=args.device,
                         query_files={"train": args.train, "val": args.val})
    print0(f"wrote {args.output}: val {VAL_METRIC} by epoch {rec['val_by_epoch']} (0 = first stage) -> epoch "
           f"{rec['selected_epoch']}; {rec['data']['examples']} examples, {rec['wall_seconds']}s")
    print0(json.dumps({k: rec[k] for k in ("val_by_epoch", "selected_epoch", "wall_seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
