"""What a training run reports while it runs: the metrics CSV (and wandb when asked), a progress bar with
ETA, and throughput."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from nanochat.common import CsvLog

logger = logging.getLogger("nanochat.train")


class MetricsLogger:
    """Per-step rows in a CSV beside the checkpoint (rank 0 only); a resume keeps the rows up to its step.

    wandb is used only when WANDB_RUN is set and wandb imports; otherwise nothing leaves the machine.
    """

    FIELDS = ["step", "loss", "val_loss", "lr", "tokens_per_s", "elapsed_s"]

    def __init__(self, csv_path, run_name: str | None = None, config: dict | None = None, rank: int = 0,
                 resume_step: int | None = None, project: str = "nanochat-rag", fields: list[str] | None = None):
        self.csv, self.rank = CsvLog(csv_path, fields or self.FIELDS), rank
        self.wandb = None
        if rank != 0:
            return
        self.csv.resume(resume_step)
        if os.environ.get("WANDB_RUN") and run_name and run_name != "dummy":
            try:
                import wandb
                self.wandb = wandb.init(project=project, name=run_name, config=config or {})
            except Exception as e:  # offline, not installed, not logged in: keep training
                logger.warning("wandb unavailable (%s); logging to %s only", e, self.csv.path)

    @property
    def path(self) -> Path:
        return self.csv.path

    def log(self, **row) -> None:
        if self.rank != 0:
            return
        self.csv.append(**row)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in row.items() if v is not None}, step=row.get("step"))

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


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
