"""Resume state beside checkpoint_manager's model/optimizer files: the loader cursor and every RNG.

Saved as tensors and plain types, so it loads with torch.load(weights_only=True).
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from nanochat.common import atomic_path
from nanochat.train.loop import Cursor


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
