"""Fine-tune the KB's dense encoder on the KB's own questions (a DAG stage): contrastive, in-batch negatives plus
hard negatives mined from the KB's BM25 and dense results, the epoch kept by the val score.

    python -m nanochat.retrieval.finetune --knowledge_base results/kb/x/stock --train q_train.jsonl --val q_val.jsonl \
        --output results/kb/x/embedder [--epochs 1 --batch_size 32 --lr 2e-5 --hard_negatives 1]

The loss is sentence-transformers' MultipleNegativesRankingLoss (each question against its gold passage, its hard
negatives and every other passage of the batch), driven by a plain torch loop: the library's Trainer would add
`datasets` and `accelerate` for no gain on one CPU. Selection: the val nDCG@10 of the starting model (epoch 0)
and of every epoch; the best is saved, so the stage never hands on a model worse on val than the one it started
from. The output is a sentence-transformers directory plus training.json; its content hash
(embeddings.model_sha256) is the id a KB embedded with it carries ("sha256:..."), so that KB gets its own kb_id.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from nanochat.common import atomic_write_json, print0, sha256_file
from nanochat.retrieval import pairs

log = logging.getLogger(__name__)

DEFAULTS = {"epochs": 1, "batch_size": 32, "lr": 2e-5, "hard_negatives": 1, "train_seq_length": 0, "warmup": 0.1,
            "val_pool": 2000, "depth": 30, "seed": 0}
VAL_METRIC = "ndcg@10"


# -----------------------------------------------------------------------------
# The training loop both retrievers share (bi-encoder here, cross-encoder in rerank.py)

def train_with_selection(model, loss_fn, batch_inputs, epochs: int, lr: float, warmup: float, evaluate, seed: int,
                         desc: str, show_progress: bool = True, keep_start: bool = True,
                         head: tuple[str, float] | None = None) -> dict:
    """AdamW with linear warm-up and decay over epochs x batches; evaluate() after each epoch (and before the
    first: epoch 0). The model ends with the weights of the best-scoring epoch (of the trained ones only when
    not keep_start: a cross-encoder's new head is random before training). Returns the training log.

    batch_inputs(epoch) -> list of loss inputs, one per step; loss_fn(inputs) -> scalar tensor.
    head: (name fragment, learning rate) for freshly initialised parameters that need a larger step than the
    pretrained body (a cross-encoder's classifier).
    """
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup
    torch.manual_seed(seed)
    scores = [evaluate()]
    best, best_state = 0, copy.deepcopy(model.state_dict())
    plans = [batch_inputs(e) for e in range(epochs)]
    total = sum(len(p) for p in plans)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    is_head = (lambda n: head[0] in n) if head else (lambda n: False)
    groups = [{"params": [p for n, p in named if not is_head(n)], "lr": lr}]
    if head:
        groups.append({"params": [p for n, p in named if is_head(n)], "lr": head[1]})
    opt = torch.optim.AdamW(groups, lr=lr, fused=all(p.device.type in ("cpu", "cuda") for _, p in named))
    sched = get_linear_schedule_with_warmup(opt, int(warmup * total), max(1, total))
    losses, t0 = [], time.perf_counter()
    bar = tqdm(total=total, desc=desc, unit="step", disable=not show_progress, dynamic_ncols=True, mininterval=1.0)
    for epoch, plan in enumerate(plans, start=1):
        model.train()
        running = []
        for inputs in plan:
            loss = loss_fn(inputs)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            running.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{np.mean(running[-20:]):.3f}")
        model.eval()
        losses.append(round(float(np.mean(running)), 5) if running else None)
        scores.append(evaluate())
        log.info("epoch %d: loss %.4f, val %s %s (start %s)", epoch, losses[-1] or 0.0, VAL_METRIC, scores[-1], scores[0])
        if scores[-1] is None or scores[-1] > scores[best] or (best == 0 and not keep_start):  # None: no val, keep the last
            best, best_state = epoch, copy.deepcopy(model.state_dict())
    bar.close()
    model.load_state_dict(best_state)
    return {"val_by_epoch": [None if s is None else round(s, 5) for s in scores], "selected_epoch": best, "loss_by_epoch": losses,
            "steps": total, "train_seconds": round(time.perf_counter() - t0, 1)}


def query_files_sha256(files: dict) -> dict:
    return {k: sha256_file(v) for k, v in sorted(files.items()) if v}


def save_model_dir(model, output_dir, record: dict, settings_files: dict | None = None) -> dict:
    """Write the model (atomically: a temp directory renamed into place) with training.json beside its files.

    settings_files: {name: JSON object} written into the directory before its content hash is taken (settings
    that change what the model outputs, e.g. a reranker's fusion weight); training.json is outside the hash."""
    from nanochat.retrieval.embeddings import LOCAL_ID_PREFIX, model_sha256
    from nanochat.retrieval.kb import atomic_dir
    with atomic_dir(output_dir) as tmp:
        model.save(str(tmp), create_model_card=False)
        for name, obj in (settings_files or {}).items():
            atomic_write_json(Path(tmp) / name, obj)
        record = {**record, "model_sha256": model_sha256(tmp)}
        record["model_id"] = LOCAL_ID_PREFIX + record["model_sha256"]
        atomic_write_json(Path(tmp) / "training.json", record)
    return record


# -----------------------------------------------------------------------------
# Dense encoder

def _encode(model, texts: list[str], batch_size: int = 64) -> np.ndarray:
    with torch.inference_mode():
        return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False).astype(np.float32)


def dense_val_score(model, val_rows: list[dict], pool: np.ndarray, texts: list[str], doc_ids,
                    pool_vectors: np.ndarray | None = None) -> float:
    """nDCG@10 of the val questions ranked by `model` over the chunk rows of `pool` (pool_vectors: their
    embeddings when already known, e.g. the KB's own for the model it was embedded with)."""
    if not val_rows:
        return None
    qv = _encode(model, [r["question"] for r in val_rows])
    pv = _encode(model, [texts[i] for i in pool]) if pool_vectors is None else np.asarray(pool_vectors, np.float32)
    top = np.argsort(-(qv @ pv.T), axis=1, kind="stable")[:, :max(10, min(100, len(pool)))]
    return pairs.ranking_score([str(r["id"]) for r in val_rows], pool[top], doc_ids, pairs.qrels_of(val_rows), VAL_METRIC)


def load_trainable(model_name: str, device):
    """A fresh (uncached) SentenceTransformer to train; never shares weights with the encode cache."""
    from sentence_transformers import SentenceTransformer
    from nanochat.retrieval.embeddings import resolve_model_path
    return SentenceTransformer(str(resolve_model_path(model_name)), device=str(device), local_files_only=True)


def finetune_embedder(kb, train_rows: list[dict], val_rows: list[dict], output_dir, model: str | None = None,
                      epochs: int = 1, batch_size: int = 32, lr: float = 2e-5, hard_negatives: int = 1,
                      train_seq_length: int = 0, warmup: float = 0.1, val_pool: int = 2000, depth: int = 30,
                      seed: int = 0, device=None, query_files: dict | None = None, show_progress: bool = True) -> dict:
    """Train, select on val, save; returns the training record (also output_dir/training.json).

    train_seq_length: tokens per passage in the training steps (0 = the model's own). Shorter is cheaper (the
    cost of a step grows with it); the saved model keeps its own length, so the KB is embedded, and val
    scored, on whole passages as before."""
    try:  # sentence-transformers >= 6 moved the bi-encoder losses
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:
        from sentence_transformers.losses import MultipleNegativesRankingLoss
    from nanochat.common import resolve_device
    from nanochat.retrieval.embeddings import _tokenize, model_id, model_location
    from nanochat.retrieval.kb import passage_texts
    t_start = time.perf_counter()
    if not train_rows:
        raise ValueError("no training questions: the fine-tune needs questions with gold doc_ids")
    device = resolve_device(device)
    base = model or model_location(kb.manifest.get("embedding") or {})
    texts = passage_texts(kb.chunks)
    doc_ids = kb.chunks["doc_id"].astype(str).to_numpy()
    train_lists = pairs.candidate_lists(kb, [r["question"] for r in train_rows], depth)
    val_lists = pairs.candidate_lists(kb, [r["question"] for r in val_rows], depth) if val_rows else {}
    examples = pairs.build_examples(kb, train_rows, train_lists, hard_negatives, texts)
    if not examples:
        raise ValueError(f"none of the {len(train_rows)} training questions has a gold doc_id found in {kb.path}")
    pool = pairs.val_pool(len(texts), val_rows, val_lists, doc_ids, val_pool, seed)
    st = load_trainable(base, device)
    encode_len = int(st.max_seq_length)
    train_len = min(int(train_seq_length), encode_len) if train_seq_length else encode_len
    loss = MultipleNegativesRankingLoss(st)

    def batch_inputs(epoch: int):
        plan = []
        for b in pairs.batches(examples, batch_size, doc_ids, seed + epoch):
            cols = [[ex.query for ex in b], [texts[ex.positive] for ex in b]]
            n_neg = min(len(ex.negatives) for ex in b)  # the loss wants equal columns; short rows are rare
            cols += [[texts[ex.negatives[j]] for ex in b] for j in range(n_neg)]
            plan.append(cols)
        return plan

    def loss_fn(cols):
        st.max_seq_length = train_len
        try:
            features = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in _tokenize(st, c).items()} for c in cols]
        finally:
            st.max_seq_length = encode_len
        return loss(features, None)

    # epoch 0 scores the KB's own vectors when it starts from the KB's embedder at the KB's length (no re-encode)
    emb_info = kb.manifest.get("embedding") or {}
    known = kb.embeddings is not None and model is None and int(emb_info.get("max_seq_length") or 0) == encode_len
    start_vectors = [np.asarray(kb.embeddings[pool]) if known else None]

    def evaluate():
        vectors, start_vectors[0] = start_vectors[0], None
        return dense_val_score(st, val_rows, pool, texts, doc_ids, vectors)

    log_ = train_with_selection(st, loss_fn, batch_inputs, epochs, lr, warmup, evaluate, seed,
                                desc="finetune embedder", show_progress=show_progress)
    record = {"kind": "bi-encoder", "base_model": model_id(base), "loss": "MultipleNegativesRankingLoss",
              "settings": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "hard_negatives": hard_negatives,
                           "train_seq_length": train_len, "max_seq_length": encode_len, "warmup": warmup, "val_pool": val_pool,
                           "depth": depth, "seed": seed, "device": str(device)},
              "data": {"kb_id": kb.kb_id, "train_questions": len(train_rows), "val_questions": len(val_rows),
                       "examples": len(examples), "val_pool_chunks": int(len(pool)),
                       "queries_sha256": query_files_sha256(query_files or {})},
              "val_metric": VAL_METRIC, **log_}
    record["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    return save_model_dir(st, output_dir, record)


# -----------------------------------------------------------------------------
# CLI

def add_training_args(p, defaults: dict) -> None:
    """Flags shared by the embedder fine-tune and the reranker (one definer for the family)."""
    p.add_argument("--knowledge_base", required=True, help="KB with bm25 and/or dense indexes (hard negatives are mined there)")
    p.add_argument("--train", required=True, help="training questions (JSONL with doc_ids)")
    p.add_argument("--val", default=None, help="val questions (JSONL with doc_ids): the epoch is chosen on them")
    p.add_argument("--model", default=None, help="model to start from (default: the KB's embedder)")
    p.add_argument("--epochs", type=int, default=defaults["epochs"], help="passes over the training questions (0 = none)")
    p.add_argument("--batch_size", type=int, default=defaults["batch_size"], help="questions per step")
    p.add_argument("--lr", type=float, default=defaults["lr"], help="peak AdamW learning rate")
    p.add_argument("--hard_negatives", type=int, default=defaults["hard_negatives"], help="mined negatives per question")
    p.add_argument("--warmup", type=float, default=defaults["warmup"], help="fraction of steps of linear warm-up")
    p.add_argument("--depth", type=int, default=defaults["depth"], help="BM25 and dense results searched for negatives")
    p.add_argument("--seed", type=int, default=defaults["seed"], help="batch order and initialisation")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")


def main(argv=None) -> int:
    from nanochat.cli import ArgumentParser, output_dir
    from nanochat.data.queries import load_queries
    from nanochat.retrieval.kb import KnowledgeBase
    p = ArgumentParser(description="Fine-tune the KB's dense encoder on its questions (selected on val).")
    add_training_args(p, DEFAULTS)
    p.add_argument("--train_seq_length", type=int, default=DEFAULTS["train_seq_length"],
                   help="tokens per passage in training steps (0 = the model's own, 256 for MiniLM); the saved model keeps its own")
    p.add_argument("--val_pool", type=int, default=DEFAULTS["val_pool"],
                   help="chunks the val score ranks over (all when the KB has fewer)")
    p.add_argument("--output", type=output_dir, required=True, help="directory for the sentence-transformers model")
    args = p.parse_args(argv)
    kb = KnowledgeBase.load(args.knowledge_base)
    train = load_queries(args.train)
    val = load_queries(args.val) if args.val else []
    rec = finetune_embedder(kb, train, val, args.output, model=args.model, epochs=args.epochs,
                            batch_size=args.batch_size, lr=args.lr, hard_negatives=args.hard_negatives,
                            train_seq_length=args.train_seq_length, warmup=args.warmup, val_pool=args.val_pool,
                            depth=args.depth, seed=args.seed, device=args.device,
                            query_files={"train": args.train, "val": args.val})
    print0(f"wrote {args.output}: val {VAL_METRIC} by epoch {rec['val_by_epoch']} -> epoch {rec['selected_epoch']}; "
           f"{rec['data']['examples']} examples, {rec['wall_seconds']}s; id {rec['model_id'][:19]}")
    print0(json.dumps({k: rec[k] for k in ("val_by_epoch", "selected_epoch", "wall_seconds")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
