"""Small shared utilities: base directory, atomic writes, logging, distributed init.

Kept deliberately tiny (nanochat's common.py is the model): anything a test needs
lives in the module that owns the concept, not here.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger("nanochat")


def setup_logging(level: int = logging.INFO) -> None:
    """One console format for every entry point; idempotent."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def get_base_dir(base_dir: str | os.PathLike | None = None) -> Path:
    """Where checkpoints and tokenizers live: explicit path, else $NANOCHAT_BASE_DIR, else ~/.cache/nanochat."""
    if base_dir is None:
        base_dir = os.environ.get("NANOCHAT_BASE_DIR") or Path.home() / ".cache" / "nanochat"
    path = Path(base_dir).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike):
    """Yield a temporary path in the same directory; rename it onto final_path only on success.

    A crash or exception leaves no file at final_path that looks complete (the temp file is removed).
    The temporary file has final_path's own name, inside a private hidden directory beside it: writers
    that record their file's name in the file (torch.save names its zip records after it) then write
    the same bytes on every run, not a random temp name.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final_path.name}.", suffix=".tmp", dir=final_path.parent))
    tmp_path = tmp_dir / final_path.name
    tmp_path.touch()
    try:
        yield tmp_path
        if tmp_path.exists():  # give the result the usual umask-based mode
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, final_path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, ensure_ascii=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -----------------------------------------------------------------------------
# Devices and distributed training (torchrun sets RANK / LOCAL_RANK / WORLD_SIZE)

def is_ddp() -> bool:
    return int(os.environ.get("RANK", -1)) != -1


def get_dist_info() -> tuple[bool, int, int, int]:
    """(ddp, rank, local_rank, world_size) from the torchrun environment."""
    if is_ddp():
        return True, int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    return False, 0, 0, 1


def print0(*args, **kwargs) -> None:
    """print on rank 0 only, so torchrun logs are not repeated N times."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs, flush=True)


def resolve_device(device=None):
    """'auto'/None picks cuda when present; an explicit 'cuda' without a GPU is a clear error."""
    import torch
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device='cuda' was requested but no CUDA GPU is available on this machine. "
            "Pass device='cpu' (or --device cpu on the command line) to run on the CPU."
        )
    return device


def compute_init(device: str | None = None):
    """Initialise torch.distributed when launched by torchrun (nccl on GPU, gloo on CPU).

    Returns (ddp, rank, local_rank, world_size, device).
    """
    import torch
    ddp, rank, local_rank, world_size = get_dist_info()
    dev = resolve_device(device)
    if dev.type == "cuda" and ddp:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if ddp and not torch.distributed.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend, device_id=dev if dev.type == "cuda" else None)
        torch.distributed.barrier()
    return ddp, rank, local_rank, world_size, dev


def compute_cleanup() -> None:
    import torch
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# -----------------------------------------------------------------------------
# CSV: the one writer for per-question tables and per-step logs

def write_csv(path: str | os.PathLike, rows: list[dict], fields: list[str] | None = None) -> Path:
    """All rows at once, atomically; columns are `fields`, else every key in first-seen order."""
    import csv
    fields = fields or list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return Path(path)


class CsvLog:
    """A per-step log that grows one row at a time and survives a resume.

    `fields` are fixed when the log is made: a row with any other key is an error (a column that a
    refactor forgot must not vanish silently). `resume(step)` keeps the rows up to that step, so a
    resumed run rewrites exactly the steps after its checkpoint.
    """

    def __init__(self, path: str | os.PathLike, fields: list[str]):
        self.path, self.fields = Path(path), list(fields)

    def resume(self, last_step: int | None) -> None:
        """Start the file over, keeping rows with step <= last_step (None or 0: keep none)."""
        import csv
        rows = []
        if last_step and self.path.exists():
            with open(self.path, newline="", encoding="utf-8") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step") and float(r["step"]) <= last_step]
        write_csv(self.path, rows, self.fields)

    def append(self, **row) -> None:
        import csv
        unknown = sorted(set(row) - set(self.fields))
        if unknown:
            raise KeyError(f"{self.path}: column(s) {', '.join(unknown)} not among {', '.join(self.fields)}")
        new = not self.path.exists()
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=self.fields)
            if new:
                w.writeheader()
            w.writerow({k: ("" if row.get(k) is None else row[k]) for k in self.fields})


def read_csv_columns(path: str | os.PathLike) -> dict[str, list[float]]:
    """CSV -> columns of floats (empty or non-numeric cells become nan); for plots and tests."""
    import csv
    import math
    cols: dict[str, list] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                try:
                    cols.setdefault(k, []).append(float(v))
                except (TypeError, ValueError):
                    cols.setdefault(k, []).append(math.nan)
    return cols
