"""Crash-safe checkpoints for the fine-tune loop: when to save, what a complete checkpoint is, one writer per
directory, and stopping cleanly on SIGTERM / SIGUSR1.

A checkpoint of step S is complete when checkpoint_manager's meta_S.json exists (find_last_step reads only
those). Every rank writes its train state (loader cursor + RNG) first; after a barrier rank 0 writes the optimizer,
the model and meta_S.json last, each through a temp name and a rename. So a kill at any instant leaves either
a complete step S or files that no resume will pick. keep_last prunes older steps meta first, for the same reason.
"""
from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import re
import signal
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

# flags that decide when a run saves, not what it learns: changing them keeps a partial run resumable
CHECKPOINT_CADENCE_FLAGS = ("--save_every", "--save_every_minutes", "--keep_last")

logger = logging.getLogger("nanochat.train")

LOCK_FILE = "trainer.lock"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # SLURM: time limit / preemption, and --signal=USR1@<seconds>
AUTO_CHECKPOINTS = 4  # --save_every 0: about this many checkpoints per run, the last one included


# -----------------------------------------------------------------------------
# when to save

class SaveSchedule:
    """Periodic checkpoints: every `every_steps` optimizer steps (0 = auto, -1 = off) and/or every
    `every_minutes` of wall clock since the last save (0 = off)."""

    def __init__(self, every_steps: int, every_minutes: float, total_steps: int):
        if every_steps == 0:
            every_steps = max(1, math.ceil(total_steps / AUTO_CHECKPOINTS))
        self.every_steps = every_steps
        self.every_s = 60.0 * every_minutes if every_minutes and every_minutes > 0 else None
        self.last_save = time.monotonic()

    def step_due(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def time_due(self) -> bool:
        return self.every_s is not None and time.monotonic() - self.last_save >= self.every_s

    def saved(self) -> None:
        self.last_save = time.monotonic()


# -----------------------------------------------------------------------------
# stopping on a signal

class StopSignals:
    """SIGTERM / SIGUSR1 -> a flag the loop reads after each optimizer step (it checkpoints, then exits).

    Repeats are ignored (SLURM and torchrun may both send SIGTERM for one stop). If the loop does not get there
    within `grace_s` seconds (NANOCHAT_STOP_GRACE_S, default 300; 30 once the parent is gone), the process ends
    anyway: the previous checkpoint is complete, so nothing is lost but the steps since; SIGKILL or Ctrl-C
    stop at once. A context manager: the previous handlers come back on exit (tests call main() in-process).
    """

    def __init__(self, grace_s: float | None = None):
        self.received: int | None = None
        self.grace_s = float(os.environ.get("NANOCHAT_STOP_GRACE_S", "300")) if grace_s is None else grace_s
        self._previous, self._timers = {}, []
        self._parent = os.getppid()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        for timer in self._timers:
            timer.cancel()
        return False

    def _handle(self, signum, frame):
        if self.received is not None:
            return
        self.received = signum
        print(f"\nreceived {signal.Signals(signum).name}: checkpointing after this step, then exiting", flush=True)
        for seconds, only_orphans in ((self.grace_s, False), (min(self.grace_s, 30.0), True)):
            timer = threading.Timer(seconds, self._expire, args=(signum, only_orphans))
            timer.daemon = True
            timer.start()
            self._timers.append(timer)

    def _expire(self, signum: int, only_orphans: bool) -> None:
        if not only_orphans or os.getppid() != self._parent:
            print(f"no checkpoint within the grace period after {signal.Signals(signum).name}; exiting", flush=True)
            os._exit(128 + signum)

    @property
    def requested(self) -> bool:
        return self.received is not None


class Interrupted(Exception):
    """Raised out of the training loop after the checkpoint of `step` is written (signal, or --stop_at_step)."""

    def __init__(self, step: int, signum: int | None = None):
        super().__init__(step, signum)
        self.step, self.signum = step, signum


# -----------------------------------------------------------------------------
# one writer per checkpoint directory

class CheckpointDirLocked(RuntimeError):
    pass


def _process_start(pid: int) -> str | None:
    """Kernel start time of a process (Linux), to tell a live holder from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_holder(info: dict) -> str:
    return f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')}"


class TrainerLock:
    """`<dir>/trainer.lock`: an exclusive flock held for the whole training, with the holder (pid, host, start
    time) written inside so that a second trainer can name it.

    The kernel drops an flock when its process dies, however it dies, so a lock left by a dead process is simply
    free again: the next trainer takes it over (and says whose it was). The file is emptied on release, never
    deleted (deleting would let two processes lock two different files of the same name).
    """

    def __init__(self, directory):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.fd: int | None = None
        self.previous: dict | None = None

    def acquire(self) -> TrainerLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_info(fd)
            os.close(fd)
            raise CheckpointDirLocked(
                f"{self.directory} is being written by another trainer ({describe_holder(holder)}). "
                f"Two trainers on one checkpoint directory would overwrite each other: wait for it to finish or "
                f"stop it (its lock goes away with the process), or use another --output_tag.") from None
        except OSError as e:  # a file system without flock: fall back to the holder's pid on this host
            holder = _read_info(fd)
            if holder and holder.get("host") == socket.gethostname() and _alive(holder.get("pid", -1)) \
                    and _process_start(holder["pid"]) == holder.get("proc_start"):
                os.close(fd)
                raise CheckpointDirLocked(f"{self.directory} is being written by another trainer "
                                          f"({describe_holder(holder)})") from e
        self.fd = fd
        self.previous = _read_info(fd)
        if self.previous:
            print(f"taking over {self.path} from {describe_holder(self.previous)}: that process has exited", flush=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "proc_start": _process_start(os.getpid())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def _read_info(fd: int) -> dict:
    raw = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip()
    try:
        return json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {"pid": "?", "host": "?", "started": f"? (unreadable lock file: {raw[:80]!r})"}


def lock_holder(directory) -> dict | None:
    """Who holds the trainer lock of a directory right now (None when nobody does)."""
    path = Path(directory) / LOCK_FILE
    if not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_info(fd) or {"pid": "?", "host": "?", "started": "?"}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# -----------------------------------------------------------------------------
# keep_last

_STEP_FILE = re.compile(r"(?:model|meta|optim|train_state)_(\d+)(?:_rank\d+)?\.(?:pt|json)")


def checkpoint_steps(directory) -> dict[int, list[Path]]:
    """step -> its files (model, meta, optimizer and train-state shards)."""
    steps: dict[int, list[Path]] = {}
    for p in Path(directory).iterdir():
        m = _STEP_FILE.fullmatch(p.name)
        if m:
            steps.setdefault(int(m.group(1)), []).append(p)
    return steps


def prune(directory, keep_last: int) -> list[int]:
    """Delete all but the newest `keep_last` complete checkpoints (0 = keep all), and leftovers of incomplete
    saves older than the newest complete one. meta goes first, so a kill mid-prune leaves no false 'complete'."""
    if keep_last <= 0:
        return []
    steps = checkpoint_steps(directory)
    complete = sorted(s for s, files in steps.items() if any(f.name.startswith("meta_") for f in files))
    if not complete:
        return []
    keep = set(complete[-keep_last:])
    removed = []
    for step in sorted(steps):
        if step in keep or step > complete[-1]:
            continue
        for f in sorted(steps[step], key=lambda f: not f.name.startswith("meta_")):
            f.unlink(missing_ok=True)
        removed.append(step)
    return removed
