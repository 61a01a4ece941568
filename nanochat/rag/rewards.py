"""REFRAG rewards: one number in [0, 1] per sampled answer, plus its components for logging.

    reward = W_F1 * answer F1 against the gold answers
           + W_RECALL * recall of the gold supporting documents over the hops used
           + W_CITATION * citation F1 (cited documents vs the gold documents shown)
           - penalties, then clipped to [0, 1]

Weights sum to 1, so a correct, correctly cited answer with full retrieval recall earns 1.0.
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

from nanochat.rag import metrics as M

W_F1 = 0.6               # answer quality dominates
W_RECALL = 0.2           # gold supporting documents found over the hops
W_CITATION = 0.2         # citing exactly the gold documents that were shown
PENALTY_EMPTY = 1.0      # empty answer: reward 0 whatever else holds
PENALTY_UNSUPPORTED = 0.3  # answer text appears in no shown document
PENALTY_LONG = 0.2       # answer far longer than the gold answer
LONG_ANSWER_WORDS = 20   # words allowed beyond the gold answer's length before PENALTY_LONG
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


def compute_reward(answer: str, answers: list[str], documents: list[dict], gold_doc_ids=None,
                   w_f1: float = W_F1, w_recall: float = W_RECALL, w_citation: float = W_CITATION,
                   penalty_empty: float = PENALTY_EMPTY, penalty_unsupported: float = PENALTY_UNSUPPORTED,
                   penalty_long: float = PENALTY_LONG, long_answer_words: int = LONG_ANSWER_WORDS,
                   abstain_reward: float = ABSTAIN_REWARD) -> dict:
    """Reward of one answer given the documents it was shown (all hops, in message order).

    Returns {"reward", "f1", "em", "recall", "citation", "empty", "unsupported", "long", "abstained"}.
    """
    gold_doc_ids = list(gold_doc_ids or [])
    text = M.strip_citations(M.final_answer(answer or ""))  # quote-style answers: the part after Answer:
    f1 = M.f1_score(text, answers) if answers else 0.0
    em = M.exact_match(text, answers) if answers else 0.0
    recall = retrieval_recall(documents, gold_doc_ids)
    cite = citation_f1(answer or "", documents, gold_doc_ids)
    empty = not M.normalize_answer(text)
    abstained = M.is_abstention(answer or "")
    unsupported = bool(documents) and M.is_unsupported(answer or "", documents)
    gold_words = min((len(a.split()) for a in answers), default=0)
    too_long = len(text.split()) > gold_words + long_answer_words
    if abstained:
        answer_shown = any(M.contains_answer(f"{d.get('title', '')} {d.get('content', '')}", answers) for d in documents)
        reward = 0.0 if answer_shown else abstain_reward
    else:
        reward = w_f1 * f1 + w_recall * recall + w_citation * cite
        reward -= penalty_empty * empty + penalty_unsupported * unsupported + penalty_long * too_long
    return {"reward": float(min(1.0, max(0.0, reward))), "f1": f1, "em": em, "recall": recall, "citation": cite,
            "empty": float(empty), "unsupported": float(unsupported), "long": float(too_long),
            "abstained": float(abstained)}


COMPONENTS = ("reward", "f1", "em", "recall", "citation", "empty", "unsupported", "long", "abstained")
