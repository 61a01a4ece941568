"""A cross-encoder reranker, initialised from the KB's MiniLM weights (a new one-logit head) and trained on the same
(question, gold passage, hard negatives) examples as the dense fine-tune; it reorders the top `depth` hits of
any retriever and never adds or drops one.

    python -m nanochat.retrieval.rerank --knowledge_base results/kb/x/stock --train q_train.jsonl --val q_val.jsonl \
        --output results/kb/x/reranker [--epochs 1 --batch_size 16 --lr 2e-5 --hard_negatives 1]

Loss: sentence-transformers' cross-encoder MultipleNegativesRankingLoss (softmax over the gold passage, the hard
negatives and a few in-batch negatives). Selection on val: the nDCG@10 of reranking each val question's
BM25 + dense candidates; epoch 0 is the candidates' own order, so `selected_epoch` 0 means it did not help.
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


def load_cross_encoder(model_name: str, device, max_length: int = 256):
    """CrossEncoder over a local sentence-transformers directory (a bi-encoder is converted: new head)."""
    import os
    from sentence_transformers import CrossEncoder
    from nanochat.retrieval.embeddings import resolve_model_path
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return CrossEncoder(str(resolve_model_path(model_name)), num_labels=1, max_length=max_length, device=str(device),
                        local_files_only=True)


def rerank_rows(scorer, queries: list[str], idx: np.ndarray, scores: np.ndarray, texts: list[str], depth: int,
                batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Reorder the first `depth` hits of each row (Q, k) by scorer(pairs) -> logits; hits below stay as they were.

    The reranked part is a permutation of the hits it was given (ties keep the first-stage order); the scores
    of reranked hits become the cross-encoder's logits.
    """
    idx, scores = np.array(idx, copy=True), np.array(scores, dtype=np.float32, copy=True)
    spans = []
    for r in range(idx.shape[0]):
        head = [c for c in range(min(depth, idx.shape[1])) if idx[r, c] >= 0]
        spans.append(head)
    flat = [(queries[r], texts[idx[r, c]]) for r, head in enumerate(spans) for c in head]
    logits = np.asarray(scorer(flat, batch_size), dtype=np.float32).reshape(-1) if flat else np.zeros(0, np.float32)
    pos = 0
    for r, head in enumerate(spans):
        s = logits[pos:pos + len(head)]
        pos += len(head)
        order = np.argsort(-s, kind="stable")
        cols = np.asarray(head, dtype=np.int64)
        idx[r, cols] = idx[r, cols[order]]
        scores[r, cols] = s[order]
    return idx, scores


class Reranker:
    """A trained cross-encoder directory (python -m nanochat.retrieval.rerank) ready to score pairs."""

    def __init__(self, model_dir, device=None, batch_size: int = 64):
        from nanochat.common import resolve_device
        from nanochat.retrieval.embeddings import model_id
        self.model_dir, self.batch_size = str(model_dir), batch_size
        self.id = model_id(self.model_dir)
        rec = Path(model_dir) / "training.json"
        if rec.is_file() and json.loads(rec.read_text()).get("beats_first_stage") is False:
            log.warning("%s did not beat its first stage on val when trained (training.json: beats_first_stage false)",
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
        idx, scores = rerank_rows(self.reranker, queries, idx, scores, self.texts, self.depth)
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
    state = {"epoch": 0}

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
            return None
        if state["epoch"] == 0:  # before training: the first-stage order (the head is still random)
            state["epoch"] += 1
            return pairs.ranking_score(val_qids, val_cands, doc_ids, val_qrels, VAL_METRIC)
        ce.eval()

        def scorer(p, bs):
            with torch.inference_mode():
                return ce.predict(p, batch_size=bs, show_progress_bar=False, activation_fn=torch.nn.Identity(),
                                  convert_to_numpy=True)
        idx, _ = rerank_rows(scorer, val_q, val_cands, np.zeros(val_cands.shape, np.float32), texts, val_depth)
        return pairs.ranking_score(val_qids, idx, doc_ids, val_qrels, VAL_METRIC)

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
    v = record["val_by_epoch"]
    record["beats_first_stage"] = None if v[0] is None else bool(v[record["selected_epoch"]] > v[0])
    if record["beats_first_stage"] is False:
        log.warning("the reranker ranks val worse than its BM25+dense candidates' own order (nDCG@10 %.4f vs %.4f): "
                    "more questions or epochs are needed before a run should use it", v[record["selected_epoch"]], v[0])
    record["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    return save_model_dir(ce, output_dir, record)


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
