"""Failure attribution: one class per evaluated question, so that retrieval misses, reading errors and answers from
memory can be told apart without joining retrieval tables and answer files by hand.

CLASSES is the registry (the per_question.csv column `failure_class`, metrics.json's `failure_classes`, the
report's stacked bars and their colours all follow it). Exactly one class per question, first match wins:

    answered_from_memory  the answer did not come from the documents: the counterfactual answer (documents
                          rewritten) still gave the original answer, or the answer is wrong with retrieval but was
                          right without it
    correct               exact match
    false_abstention      abstained although every gold document was shown
    reading_error         every gold document was shown, the answer is wrong
    retrieval_miss        a gold document was not shown and the model abstained: the right behaviour, the question
                          is lost to retrieval
    wrong_abstention      a gold document was not shown and the model answered (wrongly) instead of abstaining

Inputs per question (a row of per_question.csv or a dict): em, abstained, gold_present (all gold documents shown;
questions without gold ids count as shown), and when measured em_no_retrieval and cf_memory (1 when the
counterfactual answer equals the original answer).
"""
from __future__ import annotations

import math

CLASSES = {
    # name: (colour in the report, one-line meaning)
    "correct": ("#2ca02c", "exact match"),
    "retrieval_miss": ("#7f7f7f", "gold not shown, abstained"),
    "reading_error": ("#d62728", "gold shown, wrong answer"),
    "answered_from_memory": ("#9467bd", "memory over documents"),
    "wrong_abstention": ("#ff7f0e", "gold not shown, answered anyway"),
    "false_abstention": ("#1f77b4", "gold shown, abstained"),
}


def _flag(row: dict, key: str) -> bool | None:
    """A 0/1 field of a row as a bool; None when missing or NaN (not measured)."""
    v = row.get(key)
    if v is None or v == "":
        return None
    v = float(v)
    return None if math.isnan(v) else v >= 0.5


def classify(row: dict) -> str:
    """The failure class of one evaluated question (see the module docstring for the order)."""
    em, abstained = bool(_flag(row, "em")), bool(_flag(row, "abstained"))
    shown = _flag(row, "gold_present")
    shown = True if shown is None else shown
    if _flag(row, "cf_memory") or (not em and not abstained and _flag(row, "em_no_retrieval")):
        return "answered_from_memory"
    if em:
        return "correct"
    if shown:
        return "false_abstention" if abstained else "reading_error"
    return "retrieval_miss" if abstained else "wrong_abstention"


def summarize(rows: list[dict], by: str | None = "hops") -> dict:
    """{"all": {class: share}, "by_hops": {h: {class: share}}, "counts": {class: n}} over rows already classified
    (field failure_class); shares sum to 1 in each group."""
    def shares(rs):
        n = len(rs)
        return {c: (sum(r["failure_class"] == c for r in rs) / n if n else math.nan) for c in CLASSES}
    out = {"all": shares(rows), "counts": {c: sum(r["failure_class"] == c for r in rows) for c in CLASSES}}
    if by:
        groups: dict[str, list] = {}
        for r in rows:
            groups.setdefault(str(int(float(r.get(by, 1) or 1))), []).append(r)
        out[f"by_{by}"] = {h: shares(rs) for h, rs in sorted(groups.items(), key=lambda kv: int(kv[0]))}
    return out


def attribute(rows: list[dict], by: str | None = "hops") -> dict:
    """Set row["failure_class"] on every row; return summarize(rows, by)."""
    for r in rows:
        r["failure_class"] = classify(r)
    return summarize(rows, by)
