"""The supervised fine-tuning loop's pieces, shared by base_train, rag_finetune and refrag_finetune.

The scripts read top to bottom (nanochat's chat_sft.py is the model); what a test needs to pin down lives
here: the LR schedule, the deterministic sharded batch loader (with a cursor that survives a kill), the
loss-mask -> targets rule, the loss on supervised positions only, devices and DDP.

Shape letters: B = device batch size, T = sequence length (tokens per row).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

IGNORE_INDEX = -1  # GPT.forward ignores targets == -1



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
    if distributed():
        dist.all_reduce(total)
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")

class SupervisedLoss(torch.nn.Module):
    """GPT.forward's loss, but the lm_head runs only at supervised positions.

    In a RAG example ~10 of ~300 tokens are the answer: projecting every position onto the vocabulary
    (plus softcap and log-softmax over (B, T, V)) is most of the head's cost and all of it wasted. Same
    math as GPT.forward (GPT.trunk, then GPT.head_logits on the kept rows, cross-entropy ignoring -1),
    checked against it in tests/test_training.py; models without that split, or with a copy head (it needs
    every position as a key), fall back to model(x, y). Wrap this module (not the GPT) in DDP so gradients
    still synchronise.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.fast = (all(hasattr(model, a) for a in ("trunk", "head_logits"))
                     and getattr(model, "copy_head", None) is None)

    def forward(self, idx, targets, loss_reduction: str = "mean"):
        if not self.fast:
            return self.model(idx, targets, loss_reduction=loss_reduction)
        keep = targets != IGNORE_INDEX  # (B, T)
        h = self.model.trunk(idx)[keep]  # (N, C) supervised positions only
        logits = self.model.head_logits(h)  # (N, V)
        if h.size(0) == 0:  # nothing supervised in this batch: a zero that keeps the graph
            return logits.sum() * 0.0
        return torch.nn.functional.cross_entropy(logits, targets[keep], reduction=loss_reduction)

def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; a no-op context on CPU (fp32 is faster there and exact for resume tests)."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    import contextlib
    return contextlib.nullcontext()

def distributed() -> bool:
    """More than one rank. A single torchrun process skips every collective: they are identities there, and
    they can hang once the torchrun agent (the store's host) is gone, which is when a worker must checkpoint."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

def wrap_ddp(model, ddp: bool, device: torch.device):
    """DistributedDataParallel around the model when launched by torchrun with several ranks; the raw model
    otherwise."""
    if not (ddp and distributed()):
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

def all_reduce_mean(value: float, device) -> float:
    if not distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item() / dist.get_world_size())

def any_rank(*flags: bool, device="cpu") -> tuple[bool, ...]:
    """Each flag true if it is true on any rank (so all ranks checkpoint and stop at the same step)."""
    if not distributed():
        return tuple(bool(f) for f in flags)
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())

def supervised_steps(steps_per_epoch: int, num_epochs: int, max_steps: int, min_steps: int = 0) -> int:
    """Optimizer steps of a supervised phase: num_epochs worth, raised to min_steps (a small question set then gets
    more epochs instead of fewer updates), capped by max_steps >= 0 (max_steps alone when num_epochs <= 0)."""
    n = max(num_epochs * steps_per_epoch, min_steps)
    if max_steps >= 0:
        n = min(n, max_steps) if num_epochs > 0 else max_steps
    return n


def warmup_for(num_steps: int, warmup_steps: int, warmup_frac: float) -> int:
    """Warm-up steps: the explicit count, else warmup_frac of the phase (so it scales with the training length)."""
    return warmup_steps if warmup_steps > 0 else int(round(warmup_frac * num_steps))

def barrier() -> None:
    if distributed():
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
