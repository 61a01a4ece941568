"""No orphaned trainers: a process that should not outlive its launcher asks to be told when the launcher dies.

torchrun starts its workers in their own session, so killing the Snakemake job's process group (kill -9, a
cluster's OOM killer, a lost terminal) takes the torchrun agent but leaves the workers training on, writing
into a run Snakemake has already given up. Two mechanisms, both cheap:

- Linux: prctl(PR_SET_PDEATHSIG) through ctypes; the kernel signals us the moment the parent exits. It survives
  exec, so `python -m nanochat.pipeline.launch guard torchrun ...` gives the torchrun agent the same tie to Snakemake.
- Elsewhere (no prctl): a daemon thread that notices when the parent pid changes (we were re-parented) and
  signals us. Not both: a second SIGTERM for the same death is noise.

The signal is SIGTERM, which the training loop turns into "checkpoint at the end of this step, then exit"
(nanochat.train.checkpoints.StopSignals); a process without a handler simply dies.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Have the kernel send `sig` to this process when its parent exits (Linux only; False elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def watch_parent(parent: int, sig: int = signal.SIGTERM, interval_s: float = 1.0) -> threading.Thread:
    """A daemon thread that signals this process once its parent is no longer `parent` (it died: we were
    re-parented)."""

    def watch():
        while os.getppid() == parent:
            time.sleep(interval_s)
        os.kill(os.getpid(), sig)

    thread = threading.Thread(target=watch, name="parent-watchdog", daemon=True)
    thread.start()
    return thread


def follow_parent(sig: int = signal.SIGTERM, interval_s: float = 1.0) -> None:
    """Get `sig` when the parent exits, for the rest of this process's life; if it is already gone, at once."""
    parent = os.getppid()
    if parent == 1:  # started by a process that had already died: nobody will wait for us
        os.kill(os.getpid(), sig)
    elif not die_with_parent(sig):
        watch_parent(parent, sig, interval_s)


def launched_by_torchrun() -> bool:
    """True in a torchrun worker (its own session: the case that orphans)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def exec_guarded(argv: list[str], sig: int = signal.SIGTERM) -> None:
    """Replace this process by `argv` (e.g. torchrun ...), keeping the parent-death signal across exec."""
    if not argv:
        raise SystemExit("guard: no command given (usage: python -m nanochat.pipeline.launch guard torchrun ...)")
    die_with_parent(sig)
    if os.getppid() == 1:  # the parent died before prctl took effect
        raise SystemExit(f"guard: the launching process exited before {argv[0]} started")
    os.execvp(argv[0], argv)
