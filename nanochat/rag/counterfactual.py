"""Counterfactual documents: the answer fact rewritten to another value of the same type, to see whether an answer
follows the documents or the model's memory.

For a question whose gold documents were shown, every occurrence of the gold answer in those documents is replaced
by a substitute: another answer of the same type from the knowledge base, chosen with a seed per question (so a run
is deterministic). The model is asked again over the rewritten documents:

    faithfulness_counterfactual   share of answers that give the substitute (they follow the documents)
    memory_answer_rate            share that still give the original answer (they come from memory)

"Same type" without a type system, so that it works on a user's own knowledge base: candidates are the answers of
other questions asked the same way (the question with its names and numbers removed: "where was born"), else of any
question, always of the same surface shape (a 4-digit number for a year, one capitalised word for a name, one
lower-case word for a colour); without question answers to draw from, words of that shape from the documents.
A candidate already written in the shown documents is never used, so the rewritten documents hold exactly one
value for the fact.

Training uses the same helpers (nanochat.rag.raft.counterfactual swaps answers in training conversations).
"""
from __future__ import annotations

import random
import re
import zlib

from nanochat.rag.metrics import normalize_answer

_NAME_OR_NUMBER = re.compile(r"\b(?:[A-Z][\w'\-]*|\d[\d,.]*)\b")
_WORD = re.compile(r"[A-Za-z][\w'\-]*|\d[\d,]*")


def answer_shape(answer: str) -> tuple:
    """Coarse surface type of an answer: ("num", digits) / ("cap", words) / ("low", words)."""
    a = answer.strip()
    if a.replace(",", "").isdigit():
        return ("num", len(a))
    return ("cap" if a[:1].isupper() else "low", len(a.split()))


def question_template(question: str) -> str:
    """The question with its names and numbers removed, lower-cased: questions asked the same way share it."""
    words = _NAME_OR_NUMBER.sub(" ", question.split(" ", 1)[1] if " " in question else "")
    first = question.split(" ", 1)[0].lower()
    return " ".join([first] + [w for w in re.findall(r"[a-z]+", words.lower())])


def answer_pool(queries: list[dict]) -> dict:
    """{("tpl", template, shape) | ("shape", shape): sorted distinct answers} from question rows."""
    pool: dict[tuple, set] = {}
    for q in queries:
        for a in (q.get("answers") or [])[:1]:
            a = a.strip()
            if not a:
                continue
            shape = answer_shape(a)
            pool.setdefault(("tpl", question_template(q.get("question", "")), shape), set()).add(a)
            pool.setdefault(("shape", shape), set()).add(a)
    return {k: sorted(v) for k, v in pool.items()}


def text_pool(texts: list[str]) -> dict:
    """{("shape", shape): words of that shape in the texts}: the fallback when no question answers exist (single
    words and numbers only; a sentence's first word is skipped, it is capitalised by position, not by name)."""
    pool: dict[tuple, set] = {}
    for t in texts:
        for sentence in re.split(r"(?<=[.!?])\s+", t):
            for w in _WORD.findall(sentence)[1:]:
                pool.setdefault(("shape", answer_shape(w)), set()).add(w)
    return {k: sorted(v) for k, v in pool.items()}


def occurs(text: str, value: str) -> bool:
    """Whether value is written in text as whole words (case-sensitive, as the documents spell it)."""
    return bool(_pattern([value]).search(text))


def _pattern(values: list[str]) -> re.Pattern:
    alts = "|".join(re.escape(v) for v in sorted(set(values), key=len, reverse=True))
    return re.compile(r"(?<!\w)(" + alts + r")(?!\w)")


def swap_text(text: str, subs: dict[str, str]) -> str:
    """Every whole-word occurrence of a key of subs replaced by its value, in one pass (no chained swaps)."""
    if not subs:
        return text
    return _pattern(list(subs)).sub(lambda m: subs[m.group(1)], text)


def pick_substitute(question: str, answers: list[str], shown_text: str, pool: dict, seed: int = 0,
                    key: str = "") -> str | None:
    """A same-type alternative to the answer, absent from the shown documents, chosen by (seed, key); or None."""
    answer = answers[0].strip()
    shape = answer_shape(answer)
    golds = {normalize_answer(a) for a in answers}
    for pool_key in (("tpl", question_template(question), shape), ("shape", shape)):
        options = [x for x in pool.get(pool_key, ()) if normalize_answer(x) not in golds and not occurs(shown_text, x)]
        if options:
            rng = random.Random(zlib.crc32(f"{seed}:{key or question}".encode()))
            return options[rng.randrange(len(options))]
    return None


def rewrite_documents(documents: list[dict], answers: list[str], substitute: str,
                      doc_ids: set[str] | None = None) -> tuple[list[dict], int]:
    """Documents with every written form of the answer replaced by the substitute, in title and content, only in
    the documents whose doc_id is in doc_ids (all when None) -> (new documents, replacements made).
    Each document is a new dict; the others are returned as they were."""
    forms = [a.strip() for a in answers if a.strip()]
    out, n = [], 0
    for d in documents:
        if doc_ids is not None and _doc_id(d) not in doc_ids:
            out.append(d)
            continue
        subs = {f: substitute for f in forms}
        title, content = d.get("title") or "", d.get("content") or ""
        found = len(_pattern(forms).findall(title)) + len(_pattern(forms).findall(content)) if forms else 0
        if found:
            d = {**d, "title": swap_text(title, subs), "content": swap_text(content, subs)}
            n += found
        out.append(d)
    return out, n


def _doc_id(doc: dict) -> str:
    return str(doc.get("doc_id") or str(doc.get("id", "")).split("#", 1)[0])


def counterfactual_documents(question: str, answers: list[str], documents: list[dict], gold_doc_ids: list[str],
                             pool: dict, seed: int = 0, key: str = "") -> tuple[list[dict], str] | None:
    """(rewritten documents, substitute answer) for one question, or None when it cannot be done: no gold document
    shown, the answer is not written in a shown gold document, or no substitute of its type exists."""
    if not answers or not gold_doc_ids:
        return None
    gold = set(gold_doc_ids) & {_doc_id(d) for d in documents}
    if not gold:
        return None
    shown = " ".join(f"{d.get('title') or ''} {d.get('content') or ''}" for d in documents)
    sub = pick_substitute(question, answers, shown, pool, seed, key)
    if sub is None:
        return None
    new_docs, n = rewrite_documents(documents, answers, sub, gold)
    return (new_docs, sub) if n else None
