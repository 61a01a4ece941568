"""Answer-level metrics for RAG: SQuAD EM/F1, citations, unsupported answers, abstention.

EM/F1 follow the official SQuAD v1.1 evaluation (lowercase, drop punctuation and the
articles a/an/the, fold whitespace; max over gold answers). Citations are `[n]` markers
pointing at the 1-based position of a document in the retrieval message.
"""
from __future__ import annotations

import re
import string
from collections import Counter

# The one sentence RAFT targets use when the documents lack the answer (raft.py imports it).
ABSTAIN_ANSWER = "The provided documents do not contain the answer."
# Quote-style answers (raft.answer_target) put the supporting sentences first and the answer after this marker.
ANSWER_MARKER = "Answer:"

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, strip punctuation, articles and extra whitespace."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _as_list(answers) -> list[str]:
    return [answers] if isinstance(answers, str) else list(answers)


def final_answer(text: str) -> str:
    """The answer part of a response: what follows the last `Answer:` marker, else the whole text."""
    text = str(text)
    return text.rsplit(ANSWER_MARKER, 1)[1] if ANSWER_MARKER in text else text


def exact_match(prediction: str, answers) -> float:
    """1.0 if the normalised final answer equals any normalised gold answer (citations removed)."""
    pred = normalize_answer(strip_citations(final_answer(prediction)))
    return float(any(pred == normalize_answer(a) for a in _as_list(answers)))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, answers) -> float:
    """Token-overlap F1, max over gold answers (citations removed first)."""
    pred = normalize_answer(strip_citations(final_answer(prediction))).split()
    golds = _as_list(answers)
    if not golds:
        return 0.0
    return max(_f1(pred, normalize_answer(a).split()) for a in golds)


# -----------------------------------------------------------------------------
# Citations

def parse_citations(text: str) -> list[int]:
    """All cited positions in order of first appearance: "x [2] y [1, 3]" -> [2, 1, 3]."""
    seen: list[int] = []
    for group in _CITATION.findall(text):
        for n in group.split(","):
            n = int(n)
            if n not in seen:
                seen.append(n)
    return seen


def strip_citations(text: str) -> str:
    """Remove `[n]` markers and fold the whitespace they leave behind."""
    return " ".join(_CITATION.sub(" ", text).split())


def _doc_text(doc) -> str:
    if isinstance(doc, str):
        return doc
    return f"{doc.get('title', '')} {doc.get('content', '')}"


def contains_answer(text: str, answers) -> bool:
    """True if any normalised gold answer occurs in the normalised text (as whole tokens)."""
    hay = f" {normalize_answer(text)} "
    return any(normalize_answer(a) and f" {normalize_answer(a)} " in hay for a in _as_list(answers))


def citation_precision(text: str, documents: list, answers, gold_doc_ids=None) -> float | None:
    """Share of cited positions whose document supports the answer: it contains a gold answer or, when gold ids
    are known, it is a gold document (a two-hop answer rightly cites its bridge document too, which does not hold
    the answer). None when nothing is cited. Out-of-range citations count as wrong.
    """
    cited = parse_citations(text)
    if not cited:
        return None
    gold = set(gold_doc_ids or [])

    def supports(doc) -> bool:
        return (not isinstance(doc, str) and _doc_id(doc) in gold) or contains_answer(_doc_text(doc), answers)
    good = sum(1 for n in cited if 1 <= n <= len(documents) and supports(documents[n - 1]))
    return good / len(cited)


def citation_recall(text: str, documents: list, gold_doc_ids) -> float | None:
    """Share of gold documents present in the retrieval message that the answer cites; None if none present."""
    gold = set(gold_doc_ids)
    positions = {i + 1 for i, d in enumerate(documents) if not isinstance(d, str) and _doc_id(d) in gold}
    if not positions:
        return None
    return len(positions & set(parse_citations(text))) / len(positions)


def _doc_id(doc: dict) -> str:
    """Documents carry chunk ids `<doc_id>#<k>`; gold ids are document ids."""
    if doc.get("doc_id"):
        return str(doc["doc_id"])
    return str(doc.get("id", "")).split("#", 1)[0]


def is_unsupported(answer: str, documents: list) -> bool:
    """True if the (citation-free) answer text is not found in any retrieved document.

    Abstentions and empty answers are never "unsupported": they claim nothing.
    """
    if is_abstention(answer):
        return False
    core = normalize_answer(strip_citations(final_answer(answer)))
    if not core:
        return False
    return not any(contains_answer(_doc_text(d), [core]) for d in documents)


def is_abstention(text: str) -> bool:
    """True if the text is the RAFT abstention sentence (normalised, citations ignored)."""
    return normalize_answer(strip_citations(text)) == normalize_answer(ABSTAIN_ANSWER)
