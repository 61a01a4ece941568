"""REFRAG rewards: one number in [0, 1] per sampled answer, plus its components for logging.

    reward = sum over PARTS of weight * part(answer), then clipped to [0, 1]

PARTS is the registry: positive weights (answer F1, retrieval recall over the hops, citation F1) sum
to 1, so a correct, correctly cited answer with full retrieval recall earns 1.0; negative weights are
penalties. Adding a component is one entry here: the reward, the logs (rewards.csv, the console) and the
evaluation rows all read PARTS.
Retrieval recall does not depend on the answer; it rewards the hops (it matters when the model
writes the follow-up queries, strategy="model") and is a constant that group advantages cancel.

Hacks it is built to resist (tests/test_rewards.py has a case for each):
  - empty answer (or citations only): PENALTY_EMPTY wipes out everything, reward 0;
  - answer not found in any shown document (unsupported / hallucinated): minus PENALTY_UNSUPPORTED;
  - pasting every document: F1 collapses (precision), plus PENALTY_LONG past LONG_ANSWER_WORDS words
    more than the gold answer;
  - citing every document: citation F1 counts precision, so [1][2]...[9] scores about 2/(n+1)·...;
  - abstaining: earns ABSTAIN_REWARD only when no shown document contains the answer, else 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from nanochat.rag import metrics as M

LONG_ANSWER_WORDS = 20   # words allowed beyond the gold answer's length before the "long" penalty
ABSTAIN_REWARD = 0.5     # correct abstention (no shown document holds the answer)


def _doc_id(doc: dict) -> str:
    return str(doc.get("doc_id") or str(doc.get("id", "")).split("#", 1)[0])


def citation_f1(answer: str, documents: list[dict], gold_doc_ids) -> float:
    """F1 between the cited positions and the positions of gold documents in the message.

    No gold document shown: 1.0 for citing nothing, 0.0 for citing anything.
    """
    gold_pos = {i + 1 for i, d in enumerate(documents) if _doc_id(d) in set(gold_doc_ids)}
    cited = set(M.parse_citations(answer))
    if not gold_pos:
        return 0.0 if cited else 1.0
    if not cited:
        return 0.0
    tp = len(cited & gold_pos)
    if tp == 0:
        return 0.0
    p, r = tp / len(cited), tp / len(gold_pos)
    return 2 * p * r / (p + r)


def retrieval_recall(documents: list[dict], gold_doc_ids) -> float:
    """Share of gold documents present among the documents of all hops (1.0 when no gold is known)."""
    gold = set(gold_doc_ids or [])
    if not gold:
        return 1.0
    return len(gold & {_doc_id(d) for d in documents}) / len(gold)


@dataclass(frozen=True)
class Sample:
    """What every reward part may look at: the answer (raw and with citations stripped) and its context."""
    answer: str
    text: str
    answers: list[str]
    documents: list[dict]
    gold_doc_ids: list[str]


@dataclass(frozen=True)
class Part:
    weight: float                       # added to the reward; negative = a penalty
    score: Callable[[Sample], float]    # in [0, 1]


def _too_long(s: Sample) -> float:
    gold_words = min((len(a.split()) for a in s.answers), default=0)
    return float(len(s.text.split()) > gold_words + LONG_ANSWER_WORDS)


PARTS: dict[str, Part] = {
    # answer quality dominates
    "f1": Part(0.6, lambda s: M.f1_score(s.text, s.answers) if s.answers else 0.0),
    # gold supporting documents found over the hops (constant within a group: it rewards the hops, which
    # matters when the model writes follow-up queries)
    "recall": Part(0.2, lambda s: retrieval_recall(s.documents, s.gold_doc_ids)),
    # citing exactly the gold documents that were shown
    "citation": Part(0.2, lambda s: citation_f1(s.answer, s.documents, s.gold_doc_ids)),
    # an empty answer (or citations only) gets nothing, whatever else holds
    "empty": Part(-1.0, lambda s: float(not M.normalize_answer(s.text))),
    # answer text appears in no shown document (hallucinated)
    "unsupported": Part(-0.3, lambda s: float(bool(s.documents) and M.is_unsupported(s.answer, s.documents))),
    # far longer than the gold answer (pasting documents)
    "long": Part(-0.2, _too_long),
}
# Reported beside the parts, never weighted.
OBSERVED: dict[str, Callable[[Sample], float]] = {
    "em": lambda s: M.exact_match(s.text, s.answers) if s.answers else 0.0,
    "abstained": lambda s: float(M.is_abstention(s.answer)),
}
COMPONENTS = ("reward", *PARTS, *OBSERVED)  # the keys of compute_reward's result, in log order


def compute_reward(answer: str, answers: list[str], documents: list[dict], gold_doc_ids=None,
                   weights: dict[str, float] | None = None, abstain_reward: float = ABSTAIN_REWARD) -> dict:
    """Reward of one answer given the documents it was shown (all hops, in message order).

    Returns {"reward", every part, every observed value}; `weights` overrides parts' weights by name.
    An abstention earns abstain_reward when no shown document contains the answer, else 0.
    """
    weights = weights or {}
    unknown = sorted(set(weights) - set(PARTS))
    if unknown:
        raise KeyError(f"unknown reward part(s) {', '.join(unknown)}; parts: {', '.join(PARTS)}")
    answer = answer or ""
    sample = Sample(answer, M.strip_citations(M.final_answer(answer)), list(answers or []), list(documents),
                    list(gold_doc_ids or []))
    values = {name: float(part.score(sample)) for name, part in PARTS.items()}
    observed = {name: float(fn(sample)) for name, fn in OBSERVED.items()}
    if observed["abstained"]:
        answer_shown = any(M.contains_answer(f"{d.get('title', '')} {d.get('content', '')}", sample.answers)
                           for d in documents)
        reward = 0.0 if answer_shown else abstain_reward
    else:
        reward = sum(weights.get(name, part.weight) * values[name] for name, part in PARTS.items())
    return {"reward": float(min(1.0, max(0.0, reward))), **values, **observed}
