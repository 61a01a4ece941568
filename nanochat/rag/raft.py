"""RAFT-style single-hop training examples from precomputed retrieval.

RAFT (Zhang et al. 2024) trains the model to read *imperfect* retrieval: with probability
p_gold the gold document is in the retrieval message (inserted over the lowest-ranked hit if
retrieval missed it) and the target is the answer with `[n]` citations; otherwise the message
holds only hard negatives (our own retrieval, gold removed) and the target is the fixed
abstention sentence ABSTAIN_ANSWER. Document order is shuffled so position carries no signal.

`max_doc_length` counts whitespace words (tokenizer-independent, so one dataset recipe means the
same thing for every tokenizer). Tokenizing and sharding is nanochat.rag.shards' job; the CLI that
builds a run's dataset is nanochat.rag.dataset.
"""
from __future__ import annotations

import random
import re

import pandas as pd

from nanochat.data.chunking import split_sentences
from nanochat.rag.conversation import ChunkStore, answer_target, build_conversation
from nanochat.rag.metrics import ABSTAIN_ANSWER, contains_answer


# What an example without the answer shows (make_example's `negatives`): every gold document removed, or only the
# one the answer is read from (a multi-hop question keeps its bridge document, as single-hop retrieval shows it).
NEGATIVES = ("no_gold", "answer_doc")


def hits_by_query(table: pd.DataFrame, split: str) -> dict[str, list[tuple[str, str, float]]]:
    """query_id -> [(chunk_id, doc_id, score)] in (hop, rank) order, one split."""
    t = table[table["split"] == split].sort_values(["query_id", "hop", "rank"], kind="stable")
    out: dict[str, list] = {}
    for qid, cid, did, s in zip(t["query_id"], t["chunk_id"], t["doc_id"], t["score"]):
        out.setdefault(qid, []).append((cid, did, float(s)))
    return out

def supporting_quotes(docs: list[dict], cited: list[int], answers: list[str]) -> list[str] | None:
    """Verbatim sentences that carry the answer, one per cited document in hop order, or None.

    The last document's sentence is the first one holding the answer; an earlier (bridge) document's is the
    first one naming the next document's title. None when any of them cannot be found in the shown text.
    """
    quotes = []
    for i, n in enumerate(cited):
        doc = docs[n - 1]
        if i == len(cited) - 1:
            found = [x for x in split_sentences(doc["content"]) if contains_answer(x, answers)]
        else:
            nxt = docs[cited[i + 1] - 1]["title"].removeprefix("The ").strip()
            found = [x for x in split_sentences(doc["content"]) if nxt and nxt in x]
        if not found:
            return None
        quotes.append(found[0])
    return quotes

def _dedupe(hits):
    seen, out = set(), []
    for h in hits:
        if h[0] not in seen:
            seen.add(h[0])
            out.append(h)
    return out

def make_example(query: dict, hits: list, store: ChunkStore, top_k: int, with_gold: bool,
                 rng: random.Random, max_doc_length: int | None, answer_style: str = "short",
                 negatives: str = "no_gold", cite: str = "after"):
    """One RAFT example -> (conversation, cited doc positions) or None when it cannot be built.

    negatives (examples without gold): "no_gold" removes every gold document; "answer_doc" removes only the
    document the answer is read from (the last gold document) and any hit that holds the answer, so a multi-hop
    question keeps its bridge document when retrieval found it -- what single-hop retrieval shows at test time."""
    answers = query["answers"]
    if not answers:
        return None
    hits = _dedupe(hits)
    gold = list(query.get("doc_ids") or [])
    if not gold:  # user queries without gold ids: retrieved chunks that hold the answer count as gold
        gold = list(dict.fromkeys(d for c, d, _ in hits[:top_k] if contains_answer(store.rows[c]["content"], answers)))
        if not gold:
            return None
    if with_gold:
        chosen = hits[:top_k]
        needed = []  # (doc_id, chunk_id) the answer cites, in hop order
        for i, g in enumerate(gold):
            want_answer = answers if i == len(gold) - 1 else None
            present = [c for c, d, _ in chosen if d == g and (want_answer is None or contains_answer(store.rows[c]["content"], answers))]
            cid = present[0] if present else store.gold_chunk(g, want_answer)
            if cid is None:
                return None  # gold document not in the KB
            needed.append(cid)
        for cid in needed:
            if cid not in [c for c, _, _ in chosen]:
                # replace the lowest-ranked hit that is not itself needed
                drop = next((j for j in range(len(chosen) - 1, -1, -1) if chosen[j][0] not in needed), None)
                entry = (cid, store.rows[cid]["doc_id"], 0.0)
                if drop is None or len(chosen) < top_k:
                    chosen.append(entry)
                else:
                    chosen[drop] = entry
    else:
        drop = set(gold) if negatives == "no_gold" else set(gold[-1:])
        chosen = [h for h in hits if h[1] not in drop and not contains_answer(store.rows[h[0]]["content"], answers)]
        chosen = chosen[:top_k]
        needed = []
    rng.shuffle(chosen)
    docs = [store.doc(c, s, max_doc_length) for c, _, s in chosen]
    order = [c for c, _, _ in chosen]
    cited = [order.index(c) + 1 for c in needed]
    if not with_gold:
        target = ABSTAIN_ANSWER
    else:
        quotes = supporting_quotes(docs, cited, answers) if answer_style == "quote" else None
        target = answer_target(answers[0], cited, quotes, cite)
    return build_conversation(query["question"], docs, target), cited

def extra_turns(chosen_docs: list[dict], store: "ChunkStore", others: list[dict], max_extra: int,
                answer_style: str = "short") -> tuple[list, list]:
    """Further questions answerable (or provably not) from the same documents -> ([(q, a)], cited positions).

    Denser supervision: one forward pass carries several copy targets instead of one ~4-token answer.
    A question is used with an answer when all its gold documents are shown and the last one holds the
    answer; with the abstention sentence when none of its gold documents is shown; otherwise skipped.
    """
    shown = {store.rows[d["id"]]["doc_id"]: i + 1 for i, d in enumerate(chosen_docs)}
    turns, cited = [], []
    for q in others:
        if len(turns) >= max_extra:
            break
        gold = list(q.get("doc_ids") or [])
        if not gold or not q.get("answers"):
            continue
        if all(g in shown for g in gold):
            last = chosen_docs[shown[gold[-1]] - 1]["content"]
            if not contains_answer(last, q["answers"]):
                continue
            pos = [shown[g] for g in gold]
            quotes = supporting_quotes(chosen_docs, pos, q["answers"]) if answer_style == "quote" else None
            turns.append((q["question"], answer_target(q["answers"][0], pos, quotes)))
            cited += pos
        elif not any(g in shown for g in gold):
            turns.append((q["question"], ABSTAIN_ANSWER))
    return turns, cited

def _shape(answer: str) -> tuple:
    """Coarse answer type (number / capitalised name / lower-case word, and word count) for substitutes."""
    a = answer.strip()
    return ("num" if a.isdigit() else "cap" if a[:1].isupper() else "low", len(a.split()))

def counterfactual(conv: dict, pool: dict, rng: random.Random) -> dict:
    """The conversation with each answered turn's answer replaced, in documents and answers alike, by another
    answer of the same shape. Why: the model cannot recall a training fact it was never told consistently,
    so reading (copying from) the document is the only way to lower the loss -- what held-out entities need."""
    msgs = conv["messages"]
    answers = {m["content"].strip().rsplit(" [", 1)[0].split(" [")[0].strip() for m in msgs
               if m["role"] == "assistant" and m["content"] != ABSTAIN_ANSWER}
    subs = {}
    for a in sorted(answers):
        options = [x for x in pool.get(_shape(a), ()) if x != a and x not in answers]
        if options:
            subs[a] = rng.choice(options)
    if not subs:
        return conv
    pat = re.compile(r"(?<!\w)(" + "|".join(re.escape(a) for a in sorted(subs, key=len, reverse=True)) + r")(?!\w)")
    swap = lambda text: pat.sub(lambda m: subs[m.group(1)], text)
    out = []
    for m in msgs:
        if m["role"] == "retrieval":
            m = {**m, "documents": [{**d, "title": swap(d["title"]), "content": swap(d["content"])}
                                   for d in m["documents"]]}
        elif m["role"] == "assistant":
            m = {**m, "content": swap(m["content"])}
        out.append(m)
    return {**conv, "messages": out}

def build_examples(queries: list[dict], table: pd.DataFrame, chunks: pd.DataFrame, split: str, top_k: int = 5,
                   p_gold: float = 0.8, max_doc_length: int | None = 300, seed: int = 0,
                   turns: int = 1, p_counterfactual: float = 0.0, answer_style: str = "short",
                   turn_scope: str = "entity", negatives: str = "no_gold", cite: str = "after",
                   p_gold_multihop: float | None = None) -> tuple[list, dict]:
    """RAFT conversations for one split -> (examples, stats). Seeded per query (stable under edits).

    p_gold_multihop: p_gold of questions with more than one gold document (None = p_gold). A single-hop run shows
    such a question its bridge document without the one holding the answer at test time; a low value (with
    negatives="answer_doc") trains that view, and its abstention, on most of them instead of a tenth.

    turns > 1: each conversation also asks up to turns-1 other questions of the same split -- multi-turn RAFT --
    answered from (or abstaining on) the same retrieved documents. turn_scope "entity": questions about the same
    entity (its `entity` field, else its first gold document); "shown": questions about any shown document. p_counterfactual: share of examples whose answers are swapped
    for other answers of the same shape in documents and targets alike (see `counterfactual`).
    """
    if not 0.0 <= p_gold <= 1.0:
        raise ValueError(f"p_gold={p_gold}: must be within [0, 1]")
    if p_gold_multihop is not None and not 0.0 <= p_gold_multihop <= 1.0:
        raise ValueError(f"p_gold_multihop={p_gold_multihop}: must be within [0, 1]")
    store = chunks if isinstance(chunks, ChunkStore) else ChunkStore(chunks)
    by_q = hits_by_query(table, split)
    examples, stats = [], {"n_queries": len(queries), "with_gold": 0, "abstain": 0, "skipped": 0, "no_retrieval": 0,
                           "extra_turns": 0, "counterfactual": 0}
    pool: dict[tuple, list[str]] = {}
    for a in sorted({q["answers"][0].strip() for q in queries if q.get("answers")}) if p_counterfactual > 0 else []:
        pool.setdefault(_shape(a), []).append(a)
    by_entity: dict[str, list[dict]] = {}  # entity (or first gold document) -> its questions
    by_doc: dict[str, list[dict]] = {}  # gold document -> questions it helps answer
    for q in queries if turns > 1 else []:
        key = q.get("entity") or ((q.get("doc_ids") or [None])[0])
        if key is not None:
            by_entity.setdefault(key, []).append(q)
        for g in q.get("doc_ids") or []:
            by_doc.setdefault(g, []).append(q)
    for q in queries:
        rng = random.Random(f"{seed}:{split}:{q['id']}")
        hits = by_q.get(q["id"], [])
        if not hits:
            stats["no_retrieval"] += 1
        multihop = p_gold_multihop is not None and len(q.get("doc_ids") or []) > 1
        with_gold = rng.random() < (p_gold_multihop if multihop else p_gold)
        made = make_example(q, hits, store, top_k, with_gold, rng, max_doc_length, answer_style, negatives, cite)
        if made is None:
            stats["skipped"] += 1
            continue
        conv, cited = made
        if turns > 1:
            if turn_scope == "entity":
                key = q.get("entity") or ((q.get("doc_ids") or [None])[0])
                others = [o for o in by_entity.get(key, []) if o["id"] != q["id"]]
            else:  # any question about a shown document: the turns must tell the documents apart
                shown = dict.fromkeys(store.rows[d["id"]]["doc_id"] for d in conv["messages"][1]["documents"])
                others = list({o["id"]: o for g in shown for o in by_doc.get(g, []) if o["id"] != q["id"]}.values())
            rng.shuffle(others)
            more, more_cited = extra_turns(conv["messages"][1]["documents"], store, others, turns - 1, answer_style)
            conv["messages"] += [m for qq, a in more for m in ({"role": "user", "content": qq},
                                                               {"role": "assistant", "content": a})]
            cited = sorted(set(cited) | set(more_cited))
            stats["extra_turns"] += len(more)
        if with_gold and p_counterfactual > 0 and rng.random() < p_counterfactual:
            conv = counterfactual(conv, pool, rng)
            stats["counterfactual"] += 1
        stats["with_gold" if with_gold else "abstain"] += 1
        examples.append({"query_id": q["id"], "with_gold": with_gold, "cited": cited, "conversation": conv})
    n = stats["with_gold"] + stats["abstain"]
    stats["p_gold_actual"] = round(stats["with_gold"] / n, 4) if n else None
    return examples, stats

def build_eval_conversations(queries: list[dict], table: pd.DataFrame, chunks: pd.DataFrame, split: str = "test",
                             top_k: int = 5, max_doc_length: int | None = 300) -> list[tuple[dict, dict]]:
    """(query, prompt conversation without an answer) from the precomputed top_k, as retrieved (no gold insertion)."""
    store = chunks if isinstance(chunks, ChunkStore) else ChunkStore(chunks)
    by_q = hits_by_query(table, split)
    out = []
    for q in queries:
        docs = [store.doc(c, s, max_doc_length) for c, _, s in _dedupe(by_q.get(q["id"], []))[:top_k]]
        out.append((q, build_conversation(q["question"], docs)))
    return out
