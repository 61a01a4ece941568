"""What every rule needs around a library entry point: imports from this checkout and the job's own log.

Kept apart from the training launch helpers (launch.py) so that a rule's code dependencies (the import
closure of its wrapper) are what the rule runs, not the training machinery.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
from pathlib import Path

from nanochat.common import setup_logging


def use_checkout(basedir) -> None:
    """Let every job import nanochat/ and scripts/ from this checkout (PYTHONPATH is inherited by jobs)."""
    paths = [str(basedir)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))

@contextlib.contextmanager
def log_to(path):
    """Send this process's stdout and stderr (file descriptors too, so C extensions and tqdm) to a log file."""
    setup_logging()
    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", buffering=1, encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])

def call_main(smk, module: str, argv: list) -> None:
    """Run `<module>.main(argv)` with the job's log as stdout/stderr; a non-zero return fails the job."""
    log = smk.log[0] if len(smk.log) else None
    if log:
        Path(log).unlink(missing_ok=True)
    with log_to(log):
        rc = importlib.import_module(module).main([str(a) for a in argv])
    if rc not in (None, 0) and not isinstance(rc, (Path, str, dict)):
        raise SystemExit(f"{module} exited with status {rc} (see {log})")
