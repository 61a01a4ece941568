"""Read and validate a user's documents (documents.jsonl or a folder of .md/.txt files).

Format, one JSON object per line:
    {"id": "doc_001", "title": "Return Policy", "content": "...", "source": "optional", "metadata": {...}}

Every problem is reported as `file:line: field: problem`, so a user with 10,000 lines can fix
them all in one pass. Strict mode raises with the whole list; lenient mode keeps the good records
and writes each bad line verbatim, with its reasons, to a rejected file. Nothing is dropped silently.

    python -m nanochat.data.documents --input docs.jsonl --output valid.jsonl --rejected rejected.jsonl --mode lenient
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from nanochat.common import print0
from nanochat.data.jsonl import jsonl_lines, write_jsonl  # noqa: F401  (write_jsonl: part of this module's API)

MAX_WORDS_WARN = 2000  # the guide's best practices: documents above ~2000 words retrieve poorly
ALLOWED_CONTROL = {"\n", "\t", "\r"}
KNOWN_FIELDS = {"id", "title", "content", "source", "metadata"}
VALIDATION_MODES = ("strict", "lenient")  # strict: any problem is an error; lenient: bad records go to rejected


class DocumentValidationError(ValueError):
    """Raised in strict mode; `.problems` holds every `file:line: field: problem` string."""

    def __init__(self, problems: list[str], total: int | None = None, max_errors: int = 50):
        self.problems = problems
        total = len(problems) if total is None else total
        shown = problems[:max_errors]
        lines = [f"{total} problem(s) found in the documents:"] + ["  " + p for p in shown]
        if total > len(shown):
            lines.append(f"  ... and {total - len(shown)} more")
        lines.append("Fix these records, or pass --mode lenient to keep the valid ones and write the rest to rejected.jsonl.")
        super().__init__("\n".join(lines))


@dataclass
class ValidationReport:
    documents: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)   # {"line", "reasons", "raw"}
    warnings: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [r for rec in self.rejected for r in rec["reasons"]]


def normalize_content(text: str) -> str:
    """What counts as 'the same content' for duplicate detection: case and whitespace ignored."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def content_hash(text: str) -> str:
    return hashlib.sha256(normalize_content(text).encode("utf-8")).hexdigest()


def _control_chars(text: str) -> tuple[list[str], list[str]]:
    """(C0/DEL controls: an error, C1 controls U+0080-U+009F: a warning).

    C1 characters nearly always come from Windows-1252 text decoded as Latin-1 (U+0096 for an en
    dash, as in SciFact); the text is still usable, so they are flagged but not rejected.
    """
    found = {c for c in text if unicodedata.category(c) == "Cc" and c not in ALLOWED_CONTROL}
    fmt = lambda cs: [f"U+{ord(c):04X}" for c in sorted(cs)]
    c1 = {c for c in found if 0x80 <= ord(c) <= 0x9F}
    return fmt(found - c1), fmt(c1)


class _Validator:
    """Checks records one at a time; remembers ids and content hashes to catch duplicates."""

    def __init__(self):
        self.seen_ids: dict[str, str] = {}
        self.seen_content: dict[str, str] = {}

    def check(self, obj, where: str) -> tuple[dict | None, list[str], list[str]]:
        """-> (clean document or None, errors, warnings); messages are prefixed with `where`."""
        if not isinstance(obj, dict):
            return None, [f"{where}: record: expected a JSON object, got {type(obj).__name__}"], []
        errors, warnings = [], []
        doc = {}
        for name in ("id", "content"):
            value = obj.get(name)
            if name not in obj:
                errors.append(f"{where}: {name}: missing (required)")
            elif not isinstance(value, str):
                errors.append(f"{where}: {name}: expected a string, got {type(value).__name__}")
            elif not value.strip():
                errors.append(f"{where}: {name}: empty")
            else:
                doc[name] = value.strip() if name == "id" else value
        title = obj.get("title")
        if title is None or (isinstance(title, str) and not title.strip()):
            if "id" in doc:
                warnings.append(f"{where}: title: missing, using the id {doc['id']!r} as title")
            doc["title"] = doc.get("id", "")
        elif not isinstance(title, str):
            errors.append(f"{where}: title: expected a string, got {type(title).__name__}")
        else:
            doc["title"] = title.strip()
        source = obj.get("source")
        if source is not None and not isinstance(source, str):
            errors.append(f"{where}: source: expected a string or null, got {type(source).__name__}")
        doc["source"] = source
        metadata = obj.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            errors.append(f"{where}: metadata: expected an object or null, got {type(metadata).__name__}")
        doc["metadata"] = metadata or {}
        for name in ("id", "title", "content"):
            if isinstance(obj.get(name), str):
                bad, c1 = _control_chars(obj[name])
                if bad:
                    errors.append(f"{where}: {name}: control character(s) {', '.join(bad)} (only newline, tab allowed)")
                if c1:
                    warnings.append(f"{where}: {name}: C1 control character(s) {', '.join(c1)} (mis-decoded Windows-1252 text?)")
        extra = sorted(set(obj) - KNOWN_FIELDS)
        if extra:
            warnings.append(f"{where}: {', '.join(extra)}: unknown field(s) ignored (put extra data under 'metadata')")
        if errors:
            return None, errors, warnings
        if doc["id"] in self.seen_ids:
            errors.append(f"{where}: id: duplicate id {doc['id']!r} (first seen at {self.seen_ids[doc['id']]})")
        h = content_hash(doc["content"])
        if h in self.seen_content:
            errors.append(f"{where}: content: duplicate content (same text as {self.seen_content[h]})")
        if errors:
            return None, errors, warnings
        self.seen_ids[doc["id"]] = where
        self.seen_content[h] = where
        n_words = len(doc["content"].split())
        if n_words > MAX_WORDS_WARN:
            warnings.append(f"{where}: content: {n_words} words (> {MAX_WORDS_WARN}); it will be chunked, "
                            "but focused documents of 200-500 words retrieve better")
        return doc, errors, warnings


def validate_jsonl(path: str | Path) -> ValidationReport:
    """Check every line of a documents JSONL file; blank lines are skipped."""
    report, validator = ValidationReport(), _Validator()
    for line in jsonl_lines(path, what="documents file"):
        if line.problem:
            report.rejected.append({"line": line.lineno, "reasons": [line.problem], "raw": line.raw})
            continue
        doc, errors, warnings = validator.check(line.value, f"{path}:{line.lineno}")
        report.warnings.extend(warnings)
        if doc is None:
            report.rejected.append({"line": line.lineno, "reasons": errors, "raw": line.raw})
        else:
            report.documents.append(doc)
    return report


def validate_records(records: list, name: str = "<documents>") -> ValidationReport:
    """Same checks for documents handed over in Python (`where` is `name[index]`)."""
    report, validator = ValidationReport(), _Validator()
    for i, obj in enumerate(records):
        doc, errors, warnings = validator.check(obj, f"{name}[{i}]")
        report.warnings.extend(warnings)
        if doc is None:
            report.rejected.append({"line": i, "reasons": errors, "raw": json.dumps(obj, ensure_ascii=False, default=str)})
        else:
            report.documents.append(doc)
    return report


def documents_from_folder(folder: str | Path) -> list[dict]:
    """One document per .md/.txt file: id = relative path, title = first `# heading` or the file name.

    source is the path relative to the folder too, never where the folder lies: documents (and so a KB's
    kb_id) must not change when the folder is moved.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"documents folder not found: {folder}")
    records = []
    for p in sorted(q for q in folder.rglob("*") if q.is_file() and q.suffix.lower() in (".md", ".txt")):
        rel = p.relative_to(folder).as_posix()
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{p}:1: content: invalid UTF-8 at byte {e.start}") from None
        heading = re.search(r"^#\s+(.+?)\s*#*\s*$", text, flags=re.M) if p.suffix.lower() == ".md" else None
        title = heading.group(1) if heading else p.stem.replace("_", " ").replace("-", " ")
        records.append({"id": rel, "title": title, "content": text, "source": rel})
    if not records:
        raise ValueError(f"{folder}: no .md or .txt files found")
    return records


def load_documents(path, mode: str = "strict", rejected_path=None, max_errors: int = 50, verbose: bool = True) -> list[dict]:
    """Validated documents from a JSONL file, a folder of .md/.txt, or a list of dicts.

    strict: raise DocumentValidationError listing every problem (first `max_errors`, then a count).
    lenient: return the valid documents; write bad records (raw line, line number, reasons) to
    `rejected_path` when given, and print a count plus the first reasons either way.
    """
    if mode not in VALIDATION_MODES:
        raise ValueError(f"mode must be one of {', '.join(VALIDATION_MODES)}, got {mode!r}")
    if isinstance(path, (list, tuple)):
        report = validate_records(list(path))
    elif Path(path).is_dir():
        report = validate_records(documents_from_folder(path), name=str(path))
    else:
        report = validate_jsonl(path)
    log = (lambda *a: print0(*a, file=sys.stderr)) if verbose else (lambda *a: None)
    for w in report.warnings[:max_errors]:
        log(f"WARN {w}")
    if len(report.warnings) > max_errors:
        log(f"WARN ... and {len(report.warnings) - max_errors} more warnings")
    problems = report.problems
    if mode == "strict" and problems:
        raise DocumentValidationError(problems, max_errors=max_errors)
    if rejected_path is not None:
        write_jsonl(rejected_path, report.rejected)
    if report.rejected:
        for p in problems[:max_errors]:
            log(f"REJECTED {p}")
        dest = f" (written to {rejected_path})" if rejected_path else ""
        log(f"{len(report.documents)} valid documents, {len(report.rejected)} rejected{dest}")
    if not report.documents:
        raise DocumentValidationError(problems or [f"{path}: no documents found"], max_errors=max_errors)
    return report.documents


def main(argv=None) -> int:
    from nanochat.cli import ArgumentParser, output_file
    parser = ArgumentParser(description="Validate documents (JSONL or a folder of .md/.txt) into a clean JSONL file.")
    parser.add_argument("--input", required=True, help="documents.jsonl or a folder of .md/.txt files")
    parser.add_argument("--output", type=output_file, required=True, help="where to write the valid documents (JSONL)")
    parser.add_argument("--rejected", default=None, help="where to write rejected records (default: next to --output)")
    parser.add_argument("--mode", choices=VALIDATION_MODES, default="strict", help="strict: any problem is an error")
    parser.add_argument("--max_errors", type=int, default=50, help="problems listed before '... and N more'")
    args = parser.parse_args(argv)
    rejected = args.rejected or str(Path(args.output).with_name("rejected.jsonl"))
    try:
        docs = load_documents(args.input, mode=args.mode, rejected_path=rejected, max_errors=args.max_errors)
    except (DocumentValidationError, FileNotFoundError, ValueError) as e:
        print0(f"ERROR {e}", file=sys.stderr)
        return 1
    write_jsonl(args.output, docs)
    print0(f"wrote {len(docs)} documents to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
