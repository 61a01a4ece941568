"""Planning-time memo: values derived from this checkout's source, kept on disk between Snakemake runs.

Every `snakemake` call (a dry run, a re-run, each SLURM job re-reading the Snakefile) used to re-derive the
same things from the source: the config schema's registry names (importing torch through the modules that
hold them, ~3 s) and every rule's code dependencies (parsing every module, ~2 s). Both depend on nothing but
the source files, so they are stored under a fingerprint of those files: any edit, new or deleted file
changes it, and the values are derived afresh. The file is JSON (never pickle) and written atomically, so two
planners racing each other leave one complete copy.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from nanochat.common import atomic_write_text

SOURCE_DIRS = ("nanochat", "scripts")


def source_fingerprint(root, extra_files=()) -> str:
    """Hash of (path, size, mtime) of every .py file under SOURCE_DIRS of root, and of extra_files."""
    root = Path(root).resolve()
    h = hashlib.sha256()
    files = sorted(p for d in SOURCE_DIRS if (root / d).is_dir() for p in (root / d).rglob("*.py"))
    for path in [*files, *(Path(f).resolve() for f in extra_files)]:
        try:
            st = path.stat()
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            h.update(f"{path}\0missing\n".encode())
    return h.hexdigest()


class PlanCache:
    """A JSON dict of derived values that is valid for one fingerprint only; `None` path = memory only."""

    def __init__(self, path, fingerprint: str):
        self.path = Path(path) if path else None
        self.fingerprint = fingerprint
        self.values: dict = {}
        if self.path and self.path.is_file():
            try:
                stored = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                stored = {}
            if stored.get("fingerprint") == fingerprint:
                self.values = stored.get("values", {})

    def get(self, key: str, compute):
        """The stored value of key, or compute() stored (and written to disk) when there is none."""
        if key not in self.values:
            self.values[key] = compute()
            self._write()
        return self.values[key]

    def _write(self):
        if self.path is not None:
            atomic_write_text(self.path, json.dumps({"fingerprint": self.fingerprint, "values": self.values}))
