"""Multi-hop (REFRAG) conversations from precomputed hops: training examples and prompts that fit the context.

Warm-up data is RAFT over the guide's multi_hop message: with probability p_gold every gold document is
present (a missing one replaces the lowest-ranked, uncited hit of the hop it belongs to) and the target is
the answer with its [n] citations, numbered across hops; otherwise gold documents are removed and the
target is the abstention sentence. Prompts that overflow are shortened -- every document alike first, then
hop queries -- before the tokenizer may drop a document, so the last hop (where a two-hop answer is) survives.
"""
from __future__ import annotations

import random

import pandas as pd

from nanochat.rag import metrics as M
from nanochat.rag.conversation import (MIN_DOC_WORDS, ChunkStore, answer_target, message_documents,
                                       multihop_conversation, truncate_words)
from nanochat.retrieval.multihop import group_hops, retrieval_message


def _hits_with_gold(hops: list, gold: list[str], store: ChunkStore, answers: list[str], top_k: int):
    """Put every gold document into the hops (gold i goes to hop min(i, last)); return (hops, needed chunk ids)."""
    hops = [(h, q, list(hits)) for h, q, hits in hops] or [(1, None, [])]
    needed = []
    for i, g in enumerate(gold):
        want = answers if i == len(gold) - 1 else None
        present = [c for _, _, hits in hops for c, d, _ in hits
                   if d == g and (want is None or M.contains_answer(store.rows[c]["content"], answers))]
        cid = present[0] if present else store.gold_chunk(g, want)
        if cid is None:
            return None, None
        needed.append(cid)
        if present:
            continue
        hits = hops[min(i, len(hops) - 1)][2]
        drop = next((j for j in range(len(hits) - 1, -1, -1) if hits[j][0] not in needed), None)
        entry = (cid, g, 0.0)
        if drop is None or len(hits) < top_k:
            hits.append(entry)
        else:
            hits[drop] = entry
    return hops, needed

def first_hop_view(query: dict, hops: list, store: ChunkStore):
    """The first hop as retrieved, and the chunk ids an answer from it cites (None when that hop does not hold
    every gold document, the last one with the answer: then the right answer is to abstain, and to hop on)."""
    first = hops[:1]
    shown = {d: c for _, _, hits in first for c, d, _ in hits}
    gold = list(query.get("doc_ids") or [])
    if not gold or not all(g in shown for g in gold):
        return first, None
    if not M.contains_answer(store.rows[shown[gold[-1]]]["content"], query["answers"]):
        return first, None
    return first, [shown[g] for g in gold]


def make_multihop_example(query: dict, hops: list, store: ChunkStore, top_k_per_hop: int, with_gold: bool,
                          rng: random.Random, max_doc_length: int | None, view: str = "all",
                          negatives: str = "no_gold"):
    """One RAFT-style multi-hop example -> (conversation, cited numbers) or None.

    view "all": every hop, RAFT gold insertion (with_gold) or removal (negatives: "no_gold" removes every gold
    document, "answer_doc" only the one holding the answer). view "first": the first hop only, as retrieved (no
    insertion): answered when it holds every gold document, else the abstention -- what adaptive hopping asks the
    model after one hop (stop when it can answer, hop on when it abstains)."""
    answers, gold = query["answers"], list(query.get("doc_ids") or [])
    if not answers or not gold:
        return None
    if view == "first":
        hops, needed = first_hop_view(query, hops, store)
        with_gold = needed is not None
        needed = needed or []
    elif with_gold:
        hops, needed = _hits_with_gold(hops, gold, store, answers, top_k_per_hop)
        if hops is None:
            return None
    else:
        drop = set(gold) if negatives == "no_gold" else set(gold[-1:])
        hops = [(h, q, [x for x in hits if x[1] not in drop and not M.contains_answer(store.rows[x[0]]["content"],
                                                                                      answers)])
                for h, q, hits in hops]
        needed = []
    hops = [(h, q or query["question"], hits) for h, q, hits in hops if hits]
    if not hops:
        return None
    for _, _, hits in hops:
        rng.shuffle(hits)  # position carries no signal
    order = [c for _, _, hits in hops for c, _, _ in hits]
    cited = [order.index(c) + 1 for c in needed]
    # answer_target's leading space: the answer tokenizes as it does inside the documents, so the copy head
    # can point at it (without it the first word is a different token sequence from the one shown)
    target = answer_target(answers[0], cited) if with_gold else M.ABSTAIN_ANSWER
    msg = retrieval_message(hops, lambda c, s: store.doc(c, s, max_doc_length))
    return multihop_conversation(query["question"], msg, target), cited

def build_multihop_examples(queries: list[dict], table: pd.DataFrame, chunks, split: str, top_k_per_hop: int = 3,
                            p_gold: float = 0.8, max_doc_length: int | None = 300, seed: int = 0,
                            p_first_hop: float = 0.0, negatives: str = "no_gold") -> tuple[list, dict]:
    """Multi-hop RAFT conversations for one split of the precomputed table -> (examples, stats).

    p_first_hop: share of questions shown their first hop only (make_multihop_example's view "first"), the
    adaptive-hopping step: single-hop questions are answered from it, two-hop ones abstain until the next hop."""
    store = chunks if isinstance(chunks, ChunkStore) else ChunkStore(chunks)
    by_q = group_hops(table[table["split"] == split])
    examples, stats = [], {"n_queries": len(queries), "with_gold": 0, "abstain": 0, "skipped": 0, "first_hop": 0}
    for q in queries:
        rng = random.Random(f"{seed}:{split}:{q['id']}:multihop")
        with_gold = rng.random() < p_gold
        view = "first" if p_first_hop > 0 and rng.random() < p_first_hop else "all"
        made = make_multihop_example(q, by_q.get(q["id"], []), store, top_k_per_hop, with_gold, rng, max_doc_length,
                                     view, negatives)
        if made is None:
            stats["skipped"] += 1
            continue
        conv, cited = made
        with_gold = conv["messages"][-1]["content"] != M.ABSTAIN_ANSWER
        stats["with_gold" if with_gold else "abstain"] += 1
        stats["first_hop"] += view == "first"
        examples.append({"query_id": q["id"], "with_gold": with_gold, "cited": cited, "conversation": conv,
                         "answers": q["answers"]})
    return examples, stats

def _shorten(conv: dict, words: int | None, query_words: int | None = None) -> dict:
    """Documents cut to `words` words and, with query_words, hop queries to that many words (hop queries are
    not documents, so the tokenizer never shortens them: long entity-expanded queries must be cut here)."""
    def doc(d):
        return {**d, "content": truncate_words(d["content"], words)} if words else d
    out = []
    for m in conv["messages"]:
        if m["role"] == "retrieval" and m.get("multi_hop"):
            m = {**m, "hops": [{**h, "query": truncate_words(h["query"], query_words) if query_words else h["query"],
                                "documents": [doc(d) for d in h["documents"]]} for h in m["hops"]]}
        elif m["role"] == "retrieval":
            m = {**m, "documents": [doc(d) for d in m["documents"]]}
        out.append(m)
    return {"messages": out}

QUERY_WORD_STEPS = (None, 24, 8)  # hop-query lengths tried, longest first, when a prompt still overflows

WORD_SHRINK = 0.8  # each retry keeps 80% of the document words: short prompts lose little of their documents

def word_budgets(longest: int, max_doc_length: int | None = None):
    """Document word budgets to try, largest first: min(max_doc_length, longest), then 80% steps down to
    MIN_DOC_WORDS (halving would throw away half a document to save a few tokens)."""
    w = min(max_doc_length or longest, longest)
    while True:
        yield w or None
        if not w or w <= MIN_DOC_WORDS:
            return
        w = max(MIN_DOC_WORDS, int(w * WORD_SHRINK))

def _documents(conversation: dict) -> list[dict]:
    """Every retrieved document of a conversation, numbered as rendered ([1] is index 0)."""
    return [d for m in conversation["messages"] if m["role"] == "retrieval" for d in message_documents(m)]

def _longest_doc(conversation: dict) -> int:
    return max((len(d["content"].split()) for d in _documents(conversation)), default=0)

def _supports(conversation: dict, cited: list[int], answers: list[str]) -> bool:
    """Whether a cited document (numbers as rendered) still contains an answer after shortening."""
    docs = _documents(conversation)
    return any(0 < n <= len(docs) and M.contains_answer(docs[n - 1]["content"], answers) for n in cited)

def encode_multihop(tokenizer, conversation: dict, cited: list[int], max_seq_len: int, max_doc_length: int | None,
                    answers: list[str] | None = None):
    """(ids, mask) within max_seq_len keeping every cited document whole, or None (caller counts it).

    Shortens in order: every document's words alike (word_budgets), then hop queries (QUERY_WORD_STEPS);
    never raises on length. With answers (an answered example), an example whose shortened cited documents
    no longer contain the answer is None too: training on it would teach answers the context does not hold."""
    longest = _longest_doc(conversation)
    for qw in QUERY_WORD_STEPS:
        for w in word_budgets(longest, max_doc_length):
            conv = _shorten(conversation, w, qw)
            ids, mask, info = tokenizer.render_conversation(conv, max_tokens=max_seq_len, on_overflow="report")
            cut = set(info["dropped_docs"]) | {int(k) for k in info["shortened_docs"]}
            if not info["cut_tokens"] and not (cut & set(cited)):
                if answers and cited and not _supports(conv, cited, answers):
                    return None
                return ids, mask
            if info["cut_tokens"]:
                break  # documents are not the problem: shorter hop queries next
    return None

def fit_prompt(tokenizer, item: dict, max_tokens: int):
    """Prompt ids for an item's multi-hop conversation within max_tokens -> (ids, message) or None.

    As in training (encode_multihop): every document is shortened alike before any is dropped, then hop
    queries are shortened; only then may the tokenizer drop the last documents. An item whose question alone
    does not fit returns None, to be skipped and counted by the caller. (Letting the tokenizer drop first
    would remove the last hop's document, the one a two-hop answer is in.)"""
    conv = multihop_conversation(item["question"], item["message"])
    longest = _longest_doc(conv)
    for qw in QUERY_WORD_STEPS:
        for w in word_budgets(longest):
            c = _shorten(conv, w, qw)
            ids, info = tokenizer.render_for_completion(c, max_tokens=max_tokens, on_overflow="report")
            if info["cut_tokens"]:
                break
            if not info["dropped_docs"] and not info["shortened_docs"]:
                return ids, c["messages"][1]
    for qw in QUERY_WORD_STEPS:  # last resort: the tokenizer drops documents
        c = _shorten(conv, MIN_DOC_WORDS, qw)
        ids, info = tokenizer.render_for_completion(c, max_tokens=max_tokens, on_overflow="report")
        if not info["cut_tokens"]:
            return ids, c["messages"][1]
    return None

def fit_items(tokenizer, items: list[dict], max_tokens: int) -> tuple[list[dict], int]:
    """Items whose prompt fits max_tokens (hop queries shortened where needed) -> (kept items, number skipped)."""
    kept = []
    for it in items:
        fit = fit_prompt(tokenizer, it, max_tokens)
        if fit is not None:
            kept.append({**it, "message": fit[1]})
    return kept, len(items) - len(kept)

def prompt_items(queries: list[dict], table: pd.DataFrame, chunks, split: str, max_doc_length: int | None = 300,
                 single_table: pd.DataFrame | None = None, top_k_single: int | None = None) -> list[dict]:
    """Held-out / reward-phase items: the multi-hop message as retrieved (no gold insertion) and, with
    top_k_single, single-hop documents for a RAG comparison: the top k of single_table (a max_hops=1
    precompute table; give k = max_hops * top_k_per_hop for an equal budget), else of hop 1."""
    store = chunks if isinstance(chunks, ChunkStore) else ChunkStore(chunks)
    by_q = group_hops(table[table["split"] == split])
    by_single = group_hops(single_table[single_table["split"] == split]) if single_table is not None else by_q
    items = []
    for q in queries:
        hops = by_q.get(q["id"], [])
        msg = retrieval_message(hops, lambda c, s: store.doc(c, s, max_doc_length))
        item = {**q, "message": msg, "hop_doc_ids": [[d for _, d, _ in hits] for _, _, hits in hops]}
        if top_k_single:
            single = by_single.get(q["id"], [])
            first = single[0][2][:top_k_single] if single else []
            item["single_documents"] = [store.doc(c, s, max_doc_length) | {"doc_id": d} for c, d, s in first]
        items.append(item)
    return items
