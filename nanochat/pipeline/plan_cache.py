"""Planning-time memo: values derived from this checkout's source, kept on disk between Snakemake runs.

Every `snakemake` call (a dry run, a re-run, each SLURM job re-reading the Snakefile) used to re-derive the
same things from the source: the config schema's registry names (importing torch through the modules that
hold them, ~3 s) and every rule's code dependencies (parsing every module, ~2 s). Both depend on nothing but
the source files, so they are stored under a fingerprint of those files (paths relative to the checkout, sizes,
mtimes): any edit, new or deleted file changes it and the values are derived afresh, while a copy made with
its mtimes kept (`cp -a`, `shutil.copytree`) reuses them. The newest few fingerprints are kept, so switching
branches back and forth stays fast. The file is JSON (never pickle) and written atomically: planners racing
each other leave one complete copy.

`.snakemake/plan_cache.json` in the working directory by default; NANOCHAT_PLAN_CACHE names another file
(one shared by many working directories of the same checkout, as the workflow tests do).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from nanochat.common import atomic_write_text

SOURCE_DIRS = ("nanochat", "scripts", "workflow")  # the packages and the workflow's wrapper scripts
KEEP = 4  # fingerprints kept in one file
ENV_VAR = "NANOCHAT_PLAN_CACHE"


def source_fingerprint(root, extra_files=()) -> str:
    """Hash of (path relative to root, size, mtime) of every .py file under SOURCE_DIRS, and of extra_files."""
    root = Path(root).resolve()
    h = hashlib.sha256()
    files = sorted(p for d in SOURCE_DIRS if (root / d).is_dir() for p in (root / d).rglob("*.py"))
    for path in [*files, *(Path(f).resolve() for f in extra_files)]:
        name = path.relative_to(root) if path.is_relative_to(root) else path
        try:
            st = path.stat()
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            h.update(f"{name}\0missing\n".encode())
    return h.hexdigest()


class PlanCache:
    """Derived values valid for one source fingerprint; path None = this process only."""

    def __init__(self, path, fingerprint: str):
        self.path = Path(os.environ.get(ENV_VAR) or path) if path else None
        self.fingerprint = fingerprint
        self.values: dict = self._read().get(fingerprint, {})

    def _read(self) -> dict:
        try:
            entries = json.loads(self.path.read_text(encoding="utf-8"))["entries"]
            return entries if isinstance(entries, dict) else {}
        except (AttributeError, OSError, ValueError, KeyError, TypeError):
            return {}  # none yet, or damaged: derive again

    def get(self, key: str, compute):
        """The stored value of key, or compute() stored (and written to disk) when there is none."""
        if key not in self.values:
            self.values[key] = compute()
            self._write()
        return self.values[key]

    def _write(self):
        if self.path is None:
            return
        entries = {fp: v for fp, v in self._read().items() if fp != self.fingerprint}  # others' latest values
        entries = dict(list(entries.items())[-(KEEP - 1):]) if KEEP > 1 else {}
        entries[self.fingerprint] = self.values  # newest last
        atomic_write_text(self.path, json.dumps({"entries": entries}))
