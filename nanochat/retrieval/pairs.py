"""Training examples for the KB's retrievers: (question, gold passage, hard negatives), and the splits they come from.

- Splits are deterministic (a seeded hash orders the keys), by question or by document: questions generated
  from documents are held out by document, so a val question is never about a document trained on.
- Positive: a gold document's chunk; for documents of several chunks the one holding an answer string, else
  the one the KB's retrievers rank highest, else the first.
- Hard negatives: the KB's own BM25 and dense results for the question, gold documents excluded, taken in
  turn from each list best-first, so both kinds of near miss are trained against.

    splits = split_queries(rows, {"train": 0.7, "val": 0.1, "heldout": 0.2}, seed=0)
    lists = candidate_lists(kb, [q["question"] for q in splits["train"]], depth=30)
    examples = build_examples(kb, splits["train"], lists, hard_negatives=1)
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

MINING_SOURCES = ("bm25", "dense")  # the KB retrievers hard negatives come from, in turn


@dataclass
class Example:
    """One training row: chunk row indices into kb.chunks (the texts are passage_texts of those rows)."""
    qid: str
    query: str
    positive: int
    negatives: list[int] = field(default_factory=list)
    gold_docs: frozenset = frozenset()


def _rank_key(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode("utf-8")).hexdigest()


def hash_split(keys, fractions: dict[str, float], seed: int = 0) -> dict[str, str]:
    """key -> split name; keys ordered by a seeded hash and cut by the fractions (in dict order; they must sum
    to 1). The same keys, fractions and seed give the same assignment on every machine."""
    total = sum(fractions.values())
    if any(f < 0 for f in fractions.values()) or abs(total - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    ordered = sorted(set(keys), key=lambda k: _rank_key(seed, k))
    out, start, acc = {}, 0, 0.0
    names = list(fractions)
    for i, name in enumerate(names):
        acc += fractions[name]
        end = len(ordered) if i == len(names) - 1 else int(round(acc * len(ordered)))
        for k in ordered[start:end]:
            out[k] = name
        start = end
    return out


def split_queries(rows: list[dict], fractions: dict[str, float], seed: int = 0, by: str = "query") -> dict[str, list]:
    """Query rows -> {split: rows}, by question id or by (first gold) document; order within a split is kept."""
    if by not in ("query", "document"):
        raise ValueError(f"by must be 'query' or 'document', got {by!r}")
    if by == "document":
        missing = [r["id"] for r in rows if not r.get("doc_ids")]
        if missing:
            raise ValueError(f"cannot split by document: {len(missing)} question(s) have no doc_ids (first: {missing[0]!r})")
    key = (lambda r: str(r["id"])) if by == "query" else (lambda r: str(r["doc_ids"][0]))
    assign = hash_split([key(r) for r in rows], fractions, seed)
    out = {name: [] for name in fractions}
    for r in rows:
        out[assign[key(r)]].append(r)
    return out


def candidate_lists(kb, questions: list[str], depth: int = 30, sources=MINING_SOURCES,
                    batch_size: int = 256) -> dict[str, np.ndarray]:
    """{source: (Q, depth) chunk rows, best first, -1 padded} from the KB's own retrievers (those it has)."""
    have = [s for s in sources if s in kb.retriever_types]
    if not have:
        raise ValueError(f"{kb.path}: hard negatives are mined from the KB's {' and '.join(sources)} indexes, and it has "
                         f"neither (it has: {', '.join(kb.retriever_types)}); build it with --type bm25,dense")
    out = {}
    for s in have:
        r = kb.retriever(s)
        parts = [r.search_batch(questions[i:i + batch_size], depth)[0] for i in range(0, len(questions), batch_size)]
        out[s] = np.concatenate(parts) if parts else np.zeros((0, depth), np.int64)
    return out


def _gold_rows(doc_rows: dict, doc_id: str, answers: list[str], ranked: list[int], texts: list[str]) -> int | None:
    """The chunk row of doc_id used as the positive (see module docstring)."""
    rows = doc_rows.get(doc_id)
    if not rows:
        return None
    if len(rows) == 1:
        return rows[0]
    lowered = [a.lower() for a in answers if a.strip()]
    holding = [r for r in rows if any(a in texts[r].lower() for a in lowered)]
    pool = holding or rows
    rank = {r: i for i, r in enumerate(ranked)}
    return min(pool, key=lambda r: (rank.get(r, len(ranked)), r))


def build_examples(kb, rows: list[dict], lists: dict[str, np.ndarray], hard_negatives: int = 1,
                   texts: list[str] | None = None) -> list[Example]:
    """One Example per (question, gold document found in the KB), the first document only for multi-hop questions;
    questions without gold are skipped.

    lists: candidate_lists(kb, questions of rows) (same order). Negatives never come from a gold document.
    """
    from nanochat.retrieval.kb import passage_texts
    chunks = kb.chunks
    texts = texts if texts is not None else passage_texts(chunks)
    doc_ids = chunks["doc_id"].astype(str).to_numpy()
    doc_rows: dict[str, list[int]] = {}
    for i, d in enumerate(doc_ids):
        doc_rows.setdefault(d, []).append(i)
    examples = []
    for qi, r in enumerate(rows):
        gold = frozenset(str(d) for d in r.get("doc_ids") or [])
        if not gold:
            continue
        per_source = [[int(i) for i in lists[s][qi] if i >= 0] for s in lists]
        ranked = list(dict.fromkeys(_interleave(per_source)))  # both lists merged, best first, no repeats
        negatives = [i for i in ranked if doc_ids[i] not in gold][:hard_negatives]
        # doc_ids of a multi-hop question are in hop order: the later ones are reached through the first, not
        # from the question's words, so only the first is a positive for the question (all stay non-negatives)
        targets = [str(r["doc_ids"][0])] if int(r.get("hops") or 1) > 1 else sorted(gold)
        for d in targets:
            pos = _gold_rows(doc_rows, d, r.get("answers") or [], ranked, texts)
            if pos is not None:
                examples.append(Example(str(r["id"]), r["question"], pos, list(negatives), gold))
    return examples


def _interleave(lists: list[list[int]]):
    """a0, b0, a1, b1, ... over lists of unequal length."""
    for i in range(max((len(x) for x in lists), default=0)):
        for x in lists:
            if i < len(x):
                yield x[i]


def batches(examples: list[Example], batch_size: int, doc_ids, seed: int) -> list[list[Example]]:
    """Shuffled batches in which no question and no gold document appears twice: with in-batch negatives, another
    example's positive must not be a right answer for this question."""
    rng = np.random.default_rng(seed)
    pending = [examples[i] for i in rng.permutation(len(examples))]
    out = []
    while pending:
        batch, used_q, used_docs, rest = [], set(), set(), []
        for ex in pending:
            docs = {str(doc_ids[ex.positive])} | set(ex.gold_docs)
            if len(batch) < batch_size and ex.qid not in used_q and not (docs & used_docs):
                batch.append(ex)
                used_q.add(ex.qid)
                used_docs |= docs
            else:
                rest.append(ex)
        out.append(batch)
        pending = rest
    return out


def val_pool(n_chunks: int, val_rows: list[dict], lists: dict[str, np.ndarray], doc_ids, size: int,
             seed: int = 0) -> np.ndarray:
    """Chunk rows the val score is computed over: every chunk when the KB has at most `size`; else the val
    questions' gold chunks and their candidates rank by rank while they fit (the hard part of the ranking),
    filled up to `size` with a seeded random sample.
    Encoding a large KB once per epoch would cost more than the training itself on a CPU."""
    if n_chunks <= size:
        return np.arange(n_chunks)
    gold = {str(d) for r in val_rows for d in r.get("doc_ids") or []}
    keep = {i for i, d in enumerate(doc_ids) if str(d) in gold}
    depth = max((a.shape[1] for a in lists.values()), default=0)
    for rank in range(depth):  # the best-ranked candidates of every question first, until the pool is full
        level = {int(i) for a in lists.values() for i in a[:, rank] if i >= 0} - keep
        if len(keep) + len(level) > size:
            break
        keep |= level
    keep = sorted(keep)
    rest = np.setdiff1d(np.arange(n_chunks), np.asarray(keep, dtype=np.int64))
    fill = max(0, size - len(keep))
    extra = np.random.default_rng(seed).choice(rest, size=min(fill, len(rest)), replace=False) if fill else []
    return np.sort(np.concatenate([np.asarray(keep, dtype=np.int64), np.asarray(extra, dtype=np.int64)]))


def ranking_score(qids: list[str], ranked_rows: np.ndarray, doc_ids, qrels: dict, metric: str = "ndcg@10") -> float:
    """Mean metric over qids of chunk rankings (Q, k), a document at its best chunk's rank (as evaluate does)."""
    from nanochat.retrieval.evaluate import compute_metrics, run_from_indices
    run = run_from_indices(qids, ranked_rows, np.asarray(doc_ids))
    return compute_metrics({q: qrels[q] for q in qids}, run, [metric], scorer="numpy")[metric]


def qrels_of(rows: list[dict]) -> dict[str, dict[str, int]]:
    """Query rows -> BEIR qrels (every gold document relevance 1)."""
    return {str(r["id"]): {str(d): 1 for d in r["doc_ids"]} for r in rows if r.get("doc_ids")}
