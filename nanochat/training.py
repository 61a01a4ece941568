"""Training-loop pieces shared by base_train, rag_finetune and refrag_finetune.

The scripts read top to bottom (nanochat's chat_sft.py is the model); everything a test
needs to pin down lives here: the LR schedule, the deterministic sharded batch loader
(with a cursor that survives a kill), the loss-mask -> targets rule, the resume state,
the CSV/wandb logger and the progress bar.

Shape letters: B = device batch size, T = sequence length (tokens per row).
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from nanochat.common import atomic_path, print0

logger = logging.getLogger("nanochat.training")
IGNORE_INDEX = -1  # GPT.forward ignores targets == -1


# -----------------------------------------------------------------------------
# Learning-rate schedule

def lr_multiplier(step: int, total_steps: int, warmup_steps: int = 0, warmdown_frac: float = 0.5,
                  final_frac: float = 0.0) -> float:
    """Linear warmup, flat, then linear warmdown to final_frac (nanochat's base_train shape).

    warmdown_frac=1.0 gives chat_sft's plain linear decay from the first step.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    warmdown_steps = max(1, int(round(warmdown_frac * total_steps)))
    if step <= total_steps - warmdown_steps:
        return 1.0
    progress = (total_steps - step) / warmdown_steps  # 1 -> 0 across the warmdown
    return progress * 1.0 + (1 - progress) * final_frac


def set_lr(optimizer: torch.optim.Optimizer, multiplier: float) -> float:
    """Scale every group's `initial_lr` (recorded on first call) by multiplier; returns the first group's lr."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = group["initial_lr"] * multiplier
    return optimizer.param_groups[0]["lr"]


# -----------------------------------------------------------------------------
# Examples -> (inputs, targets) with the loss mask applied

def example_to_tensors(ids, mask, max_seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """One rendered conversation -> (inputs, targets) of length <= max_seq_len.

    targets[t] = ids[t+1] where mask[t+1] == 1 (an assistant token), else -1, so the
    loss only ever sees the tokens the model is supposed to write.
    """
    ids = np.asarray(ids, dtype=np.int64)[: max_seq_len + 1]
    mask = np.asarray(mask, dtype=np.int64)[: max_seq_len + 1]
    assert len(ids) == len(mask), f"ids/mask length mismatch: {len(ids)} vs {len(mask)}"
    inputs = ids[:-1]
    targets = np.where(mask[1:] == 1, ids[1:], IGNORE_INDEX)
    return inputs, targets


def collate(examples, max_seq_len: int, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (ids, mask) -> right-padded (B, T) inputs and targets (padding targets are -1)."""
    pairs = [example_to_tensors(ids, mask, max_seq_len) for ids, mask in examples]
    T = max(1, max(len(x) for x, _ in pairs))
    inputs = np.full((len(pairs), T), pad_id, dtype=np.int64)  # (B, T)
    targets = np.full((len(pairs), T), IGNORE_INDEX, dtype=np.int64)  # (B, T)
    for i, (x, y) in enumerate(pairs):
        inputs[i, : len(x)] = x
        targets[i, : len(y)] = y
    return torch.from_numpy(inputs), torch.from_numpy(targets)


# -----------------------------------------------------------------------------
# Deterministic loader with a resumable cursor

@dataclass
class Cursor:
    """Where the loader is: epoch and the number of examples of that epoch already consumed (all ranks)."""
    epoch: int = 0
    position: int = 0

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}


class ShardLoader:
    """Yields (inputs, targets) batches for this rank from a list of (ids, mask) examples.

    Every epoch is a permutation seeded by (seed, epoch), identical on every rank; each
    global batch of world_size * B examples is split by rank, so ranks never overlap and
    a resumed run (same cursor) sees exactly the batches the killed run would have seen.
    A trailing partial global batch is dropped so all ranks take the same number of steps.
    """

    def __init__(self, examples, batch_size: int, max_seq_len: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, pad_id: int = 0, cursor: Cursor | None = None):
        self.examples = examples
        self.batch_size, self.max_seq_len, self.pad_id = batch_size, max_seq_len, pad_id
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.global_batch = batch_size * world_size
        if len(examples) < self.global_batch:
            raise ValueError(f"only {len(examples)} training examples but one step needs "
                             f"device_batch_size {batch_size} x {world_size} ranks = {self.global_batch}; "
                             "lower --device_batch_size or add queries")
        self.cursor = cursor or Cursor()

    @property
    def steps_per_epoch(self) -> int:
        return len(self.examples) // self.global_batch

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cursor.position + self.global_batch > len(self.examples):
            self.cursor = Cursor(self.cursor.epoch + 1, 0)
        order = self._order(self.cursor.epoch)
        start = self.cursor.position + self.rank * self.batch_size
        picked = [self.examples[i] for i in order[start : start + self.batch_size]]
        self.cursor = Cursor(self.cursor.epoch, self.cursor.position + self.global_batch)
        return collate(picked, self.max_seq_len, self.pad_id)


def eval_batches(examples, batch_size: int, max_seq_len: int, rank: int = 0, world_size: int = 1, pad_id: int = 0):
    """Fixed-order batches over this rank's share of a validation split."""
    mine = examples[rank::world_size]
    for i in range(0, len(mine), batch_size):
        yield collate(mine[i : i + batch_size], max_seq_len, pad_id)


@torch.no_grad()
def evaluate_loss(model, batches, device, autocast_ctx) -> float:
    """Mean loss per supervised token over batches, all-reduced across ranks."""
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of losses, token count)
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        n = (y != IGNORE_INDEX).sum()
        if n.item() == 0:
            continue
        with autocast_ctx:
            loss = model(x, y, loss_reduction="sum")
        total += torch.stack([loss.double(), n.double()])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


def masked_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over (B, T, V) logits ignoring -1 targets (the reference rule GPT.forward follows)."""
    return torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1),
                                             ignore_index=IGNORE_INDEX, reduction=reduction)


class SupervisedLoss(torch.nn.Module):
    """GPT.forward's loss, but the lm_head runs only at supervised positions.

    In a RAG example ~10 of ~300 tokens are the answer: projecting every position onto the vocabulary
    (plus softcap and log-softmax over (B, T, V)) is most of the head's cost and all of it wasted. Same
    math as GPT.forward (trunk, final norm, lm_head, tanh softcap, cross-entropy ignoring -1), checked
    against it in tests/test_training.py; models without that structure fall back to model(x, y).
    Wrap this module (not the GPT) in DDP so gradients still synchronise.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.fast = (all(hasattr(model, a) for a in ("transformer", "lm_head", "cos", "sin"))
                     and getattr(model, "copy_head", None) is None)  # a copy head needs every position as a key

    def forward(self, idx, targets, loss_reduction: str = "mean"):
        if not self.fast:
            return self.model(idx, targets, loss_reduction=loss_reduction)
        from nanochat.blocks import norm
        from nanochat.gpt import SOFTCAP
        m, T = self.model, idx.size(1)
        cos_sin = m.cos[:, :T], m.sin[:, :T]  # (1, T, 1, D/2)
        x = norm(m.transformer.wte(idx))  # (B, T, C)
        for block in m.transformer.h:
            x = block(x, cos_sin, None)
        keep = targets != IGNORE_INDEX  # (B, T)
        h = norm(x)[keep]  # (N, C) supervised positions only
        logits = m.lm_head(h).float()  # (N, V)
        logits = SOFTCAP * torch.tanh(logits / SOFTCAP)
        if h.size(0) == 0:  # nothing supervised in this batch: a zero that keeps the graph
            return logits.sum() * 0.0
        return torch.nn.functional.cross_entropy(logits, targets[keep], reduction=loss_reduction)


# -----------------------------------------------------------------------------
# Devices, precision, DDP

def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; a no-op context on CPU (fp32 is faster there and exact for resume tests)."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    import contextlib
    return contextlib.nullcontext()


def wrap_ddp(model, ddp: bool, device: torch.device):
    """DistributedDataParallel around the model when launched by torchrun; the raw model otherwise."""
    if not ddp:
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_mean(value: float, device) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item() / dist.get_world_size())


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def set_threads(num_threads: int, device) -> int:
    """CPU intra-op threads. -1 = auto: one thread when the machine is oversubscribed (load average above the
    core count), where OpenMP workers spin against other processes and a step runs several times slower
    (measured 7x on a shared 2-core box), else torch's default; under torchrun each rank gets cores/ranks."""
    if torch.device(device).type != "cpu":
        return torch.get_num_threads()
    if num_threads <= 0:
        cores = os.cpu_count() or 1
        world = int(os.environ.get("WORLD_SIZE", 1))
        busy = hasattr(os, "getloadavg") and os.getloadavg()[0] > cores
        num_threads = 1 if busy else max(1, cores // world)
    torch.set_num_threads(num_threads)
    return num_threads


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -----------------------------------------------------------------------------
# Resume state (RNG + cursor) beside checkpoint_manager's model/optimizer files

def rng_state() -> dict:
    """Everything random in the loop, as tensors and plain types (loadable with weights_only=True)."""
    _, keys, pos, _, _ = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": torch.tensor(list(keys.astype(np.int64)) + [int(pos)], dtype=torch.int64),
             "python": torch.tensor(list(random.getstate()[1]), dtype=torch.int64)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy"].numpy()
    np.random.set_state(("MT19937", keys[:624].astype(np.uint32), int(keys[624])))
    py = tuple(int(v) for v in state["python"].tolist())
    random.setstate((3, py, None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_train_state(checkpoint_dir: str | os.PathLike, step: int, cursor: Cursor, rank: int = 0) -> Path:
    """`train_state_<step>_rank<r>.pt`: loader cursor + RNG states, written atomically."""
    path = Path(checkpoint_dir) / f"train_state_{step:06d}_rank{rank}.pt"
    with atomic_path(path) as tmp:
        torch.save({"step": step, "cursor": cursor.to_dict(), "rng": rng_state()}, tmp)
    return path


def load_train_state(checkpoint_dir: str | os.PathLike, step: int, rank: int = 0) -> dict:
    path = Path(checkpoint_dir) / f"train_state_{step:06d}_rank{rank}.pt"
    if not path.exists():
        path = Path(checkpoint_dir) / f"train_state_{step:06d}_rank0.pt"  # world size changed: reuse rank 0's
    if not path.exists():
        raise FileNotFoundError(f"--resume: no training state {path.name} in {checkpoint_dir}; "
                                "the checkpoint was not written by a resumable run")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["cursor"] = Cursor(**state["cursor"])
    return state


# -----------------------------------------------------------------------------
# Logging: CSV next to the checkpoint, wandb only when asked for and importable

class MetricsLogger:
    """Appends rows to a CSV (rank 0 only); on resume drops rows after the resumed step.

    wandb is used only when WANDB_RUN is set and wandb imports; otherwise nothing leaves the machine.
    """

    FIELDS = ["step", "loss", "val_loss", "lr", "tokens_per_s", "elapsed_s"]

    def __init__(self, csv_path, run_name: str | None = None, config: dict | None = None, rank: int = 0,
                 resume_step: int | None = None, project: str = "nanochat-rag"):
        self.path, self.rank = Path(csv_path), rank
        self.wandb = None
        if rank != 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with atomic_path(self.path) as tmp:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.FIELDS)
                w.writeheader()
                w.writerows(rows)
        if os.environ.get("WANDB_RUN") and run_name and run_name != "dummy":
            try:
                import wandb
                self.wandb = wandb.init(project=project, name=run_name, config=config or {})
            except Exception as e:  # offline, not installed, not logged in: keep training
                logger.warning("wandb unavailable (%s); logging to %s only", e, self.path)

    def log(self, **row) -> None:
        if self.rank != 0:
            return
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.FIELDS, extrasaction="ignore").writerow(
                {k: ("" if row.get(k) is None else row.get(k)) for k in self.FIELDS})
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if v is not None}, step=row.get("step"))

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics_csv(path) -> dict[str, list]:
    """CSV -> columns of floats (empty cells become nan); used by plots and tests."""
    cols: dict[str, list] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                cols.setdefault(k, []).append(float(v) if v not in ("", None) else math.nan)
    return cols


# -----------------------------------------------------------------------------
# Progress

def progress_bar(total: int, initial: int = 0, desc: str = "train", rank: int = 0):
    """tqdm with ETA on rank 0; a silent stand-in elsewhere."""
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc=desc, disable=rank != 0, dynamic_ncols=True,
                mininterval=1.0)


class Throughput:
    """Tokens/s over the last interval (wall clock, synchronised on CUDA)."""

    def __init__(self):
        self.t0, self.tokens = time.perf_counter(), 0

    def add(self, n: int) -> None:
        self.tokens += n

    def rate(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        dt = time.perf_counter() - self.t0
        r = self.tokens / dt if dt > 0 else 0.0
        self.t0, self.tokens = time.perf_counter(), 0
        return r


def log_step(step: int, total: int, loss: float, lr: float, tps: float) -> None:
    print0(f"step {step:05d}/{total:05d} | loss {loss:.4f} | lr {lr:.2e} | tok/s {tps:,.0f}")


# -----------------------------------------------------------------------------
# RAG fine-tuning data: where queries come from, building shards, general chat tasks

def resolve_query_files(kb_path, queries_train=None, queries_val=None) -> tuple[dict, str]:
    """({split: path}, how they were found): explicit flags, else queries_*.jsonl beside the KB (the
    example mode writes them there) or inside it; ({}, "documents") when none exist."""
    if queries_train:
        files = {"train": Path(queries_train)}
        if queries_val:
            files["val"] = Path(queries_val)
        for split, p in files.items():
            if not p.is_file():
                raise FileNotFoundError(f"--queries_{split}: file not found: {p}")
        return files, "flags"
    kb_path = Path(kb_path)
    for where in (kb_path.parent, kb_path):
        if (where / "queries_train.jsonl").is_file():
            files = {"train": where / "queries_train.jsonl"}
            if (where / "queries_val.jsonl").is_file():
                files["val"] = where / "queries_val.jsonl"
            return files, f"files beside the KB ({where})"
    return {}, "documents"


def build_rag_dataset(kb_path, args, dataset_dir, work_dir, tokenizer) -> Path:
    """Precompute retrieval for the queries once, then let nanochat.raft write the shards.

    Without query files the questions are built from the documents (nanochat.doc_questions).
    Uses the modules' own CLIs so the flags here are exactly the workflow's.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    files, how = resolve_query_files(kb_path, args.queries_train, args.queries_val)
    if not files:
        from nanochat import doc_questions
        doc_questions.main(["--knowledge_base", str(kb_path), "--seed", str(args.seed), "--output", str(work_dir)])
        files = {"train": work_dir / "queries_train.jsonl", "val": work_dir / "queries_val.jsonl"}
        how = "questions built from the documents (nanochat.doc_questions)"
    logger.info("rag_finetune: training queries from %s: %s", how, {k: str(v) for k, v in files.items()})
    print0(f"queries: {how}")
    if "val" not in files:  # hold out 10% of train queries for validation loss
        files = split_train_val(files["train"], work_dir, seed=args.seed)
    tok_dir = work_dir / "tokenizer"
    tokenizer.save(str(tok_dir))
    from nanochat import precompute, raft
    retrieval = work_dir / "retrieval.parquet"
    precompute.main(["--knowledge_base", str(kb_path), "--retriever_type", args.retriever_type, "--queries",
                     *[f"{k}={v}" for k, v in files.items()], "--k_max", str(max(20, args.top_k)),
                     "--output", str(retrieval)])
    raft.main(["--knowledge_base", str(kb_path), "--retrieval", str(retrieval), "--queries_train", str(files["train"]),
               "--queries_val", str(files["val"]), "--tokenizer", str(tok_dir), "--top_k", str(args.top_k),
               "--p_gold", str(args.p_gold), "--max_seq_len", str(args.max_seq_len),
               "--max_doc_length", str(args.max_doc_length), "--seed", str(args.seed), "--output", str(dataset_dir)])
    return Path(dataset_dir)


def split_train_val(train_path, work_dir, seed: int = 0, val_frac: float = 0.1) -> dict:
    """Hold out a seeded share of the training queries as a validation file (whole lines, unchanged)."""
    lines = [l for l in Path(train_path).read_text(encoding="utf-8").splitlines() if l.strip()]
    order = np.random.default_rng(seed).permutation(len(lines))
    n_val = max(1, int(len(lines) * val_frac))
    out = {}
    for split, idx in (("train", sorted(order[n_val:])), ("val", sorted(order[:n_val]))):
        out[split] = Path(work_dir) / f"queries_{split}.jsonl"
        with atomic_path(out[split]) as tmp:
            tmp.write_text("".join(lines[i] + "\n" for i in idx), encoding="utf-8")
    return out


def load_base_tasks(spec: str | None, task_samples: int, n_rag: int, tokenizer, max_seq_len: int, seed: int = 0) -> list:
    """Rendered (ids, mask) general conversations mixed into training (nanochat.raft finds and validates them).

    spec None is the guide's default "SmolTalk": used if cached locally, else one warning and RAG data only;
    an explicitly named task that is not cached is an error; "none" turns mixing off. task_samples -1 takes
    one general conversation per 4 RAG examples.
    """
    from nanochat.raft import load_base_conversations
    if spec is None:
        spec = "auto"
    spec = ",".join("smoltalk" if t.strip().lower() == "smoltalk" else t.strip() for t in spec.split(","))
    n = task_samples if task_samples >= 0 else max(1, n_rag // 4)
    convs = load_base_conversations(spec if spec.lower() != "none" else "none", n, seed)
    out = []
    for c in convs:
        ids, mask, info = tokenizer.render_conversation(c, max_tokens=max_seq_len + 1, on_overflow="report")
        if not info["cut_tokens"]:
            out.append((ids, mask))
    return out
