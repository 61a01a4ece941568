"""Query files: one JSON object per line, validated like documents.

    {"id": "q1", "question": "When was Zorvik Labs founded?", "answers": ["1987"], "doc_ids": ["d3"], "hops": 1}

`query` is accepted for `question` and a string `answer` for `answers`; `doc_ids` (gold
supporting documents) and `hops` are optional. Every problem is reported as
`file:line: field: problem`, all at once, so a user can fix a file in one pass.
"""
from __future__ import annotations

from pathlib import Path

from nanochat.data.jsonl import jsonl_lines, write_jsonl


class QueryFileError(ValueError):
    """Raised with every `file:line: field: problem` found in a query file."""


def _check_str_list(value, field: str, allow_empty: bool) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return f"{field}: expected a list of strings, got {type(value).__name__}"
    if not allow_empty and not any(v.strip() for v in value):
        return f"{field}: must contain at least one non-empty string"
    return None


def parse_query(obj, seen_ids: set) -> tuple[dict | None, list[str]]:
    """Validate one decoded record; returns (normalised row or None, problems as 'field: problem')."""
    if not isinstance(obj, dict):
        return None, [f"record: expected a JSON object, got {type(obj).__name__}"]
    problems = []
    qid = obj.get("id")
    if qid is None or (isinstance(qid, str) and not qid.strip()):
        problems.append("id: missing or empty")
    elif not isinstance(qid, (str, int)) or isinstance(qid, bool):
        problems.append(f"id: expected a string, got {type(qid).__name__}")
    elif str(qid) in seen_ids:
        problems.append(f"id: duplicate id {qid!r}")
    question = obj.get("question", obj.get("query"))
    if question is None:
        problems.append("question: missing (also accepted: 'query')")
    elif not isinstance(question, str):
        problems.append(f"question: expected a string, got {type(question).__name__}")
    elif not question.strip():
        problems.append("question: empty")
    answers = obj.get("answers", obj.get("answer"))
    if answers is None:
        answers = []
    elif isinstance(answers, str):
        answers = [answers]
    if (p := _check_str_list(answers, "answers", allow_empty=True)):
        problems.append(p)
    doc_ids = obj.get("doc_ids", [])
    if (p := _check_str_list(doc_ids, "doc_ids", allow_empty=True)):
        problems.append(p)
    hops = obj.get("hops", max(1, len(doc_ids)) if isinstance(doc_ids, list) else 1)
    if not isinstance(hops, int) or isinstance(hops, bool) or hops < 1:
        problems.append(f"hops: expected a positive integer, got {hops!r}")
    if problems:
        return None, problems
    row = {"id": str(qid), "question": question.strip(), "answers": [a for a in answers if a.strip()],
           "doc_ids": list(doc_ids), "hops": hops}
    return row, []


def load_queries(path: str | Path) -> list[dict]:
    """Read and validate a query JSONL file; raise QueryFileError listing every bad line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"query file not found: {path}")
    rows, errors, seen = [], [], set()
    for line in jsonl_lines(path, what="query file"):
        if line.problem:
            errors.append(line.problem)
            continue
        row, problems = parse_query(line.value, seen)
        errors += [f"{path}:{line.lineno}: {p}" for p in problems]
        if row is not None:
            seen.add(row["id"])
            rows.append(row)
    if errors:
        shown = "\n".join(errors[:20]) + (f"\n... and {len(errors) - 20} more" if len(errors) > 20 else "")
        raise QueryFileError(f"{len(errors)} problem(s) in query file {path}:\n{shown}")
    if not rows:
        raise QueryFileError(f"{path}: no queries found (file is empty)")
    return rows


def write_queries(path: str | Path, rows: list[dict]) -> None:
    """Write query rows as JSONL atomically (used by the synthetic world, SQuAD and doc_questions)."""
    write_jsonl(path, rows)
