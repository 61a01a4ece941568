"""The one JSONL reader and writer: every input file of the project goes through here.

Problems are reported in one format, `file:line: field: problem`, so a user can fix a whole file in one
pass. A UTF-8 byte-order mark (as spreadsheet and Windows tools write) and gzip files are accepted.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Iterator, NamedTuple

from nanochat.common import atomic_path

BOM = b"\xef\xbb\xbf"


class JsonlError(ValueError):
    """A JSONL file that cannot be read; the message is `file:line: field: problem`."""


class Line(NamedTuple):
    """One non-blank line: its number, the parsed value (None when it did not parse), the raw text, and
    the problem (None when it parsed)."""
    lineno: int
    value: object
    raw: str
    problem: str | None


def _open_binary(path: Path):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def jsonl_lines(path: str | os.PathLike, what: str = "file") -> Iterator[Line]:
    """Every non-blank line of a JSONL file, parsed or with its problem; never raises on content."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            raw_text = raw.decode("utf-8", errors="backslashreplace").rstrip("\r\n")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield Line(lineno, None, raw_text, f"{path}:{lineno}: line: invalid UTF-8 at byte {e.start}")
                continue
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                yield Line(lineno, None, raw_text, f"{path}:{lineno}: json: invalid JSON ({e.msg} at column {e.colno})")
                continue
            yield Line(lineno, value, raw_text, None)


def read_jsonl(path: str | os.PathLike, what: str = "file") -> Iterator[tuple[int, dict]]:
    """(line number, object) per non-blank line; the first unreadable line or non-object raises JsonlError."""
    for line in jsonl_lines(path, what):
        if line.problem:
            raise JsonlError(line.problem)
        if not isinstance(line.value, dict):
            raise JsonlError(f"{path}:{line.lineno}: record: expected a JSON object, got {type(line.value).__name__}")
        yield line.lineno, line.value


def write_jsonl(path: str | os.PathLike, rows) -> Path:
    """One JSON object per line, UTF-8 without escapes, written atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)
