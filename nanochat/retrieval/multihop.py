"""Multi-hop retrieval (REFRAG's retrieval half): up to max_hops rounds of top_k_per_hop new documents.

Hop 1 searches with the question. The query of hop h+1 is built from the question and the documents
hop h brought, by a named strategy from the registry in nanochat.retrieval.hop_strategies (titles, passage, entities,
focused, model).

Documents already retrieved are never returned again: each hop fetches deep enough to still have
top_k_per_hop unseen chunks and filters. A question stops early when a hop brings nothing new. Every
hop is one `search_batch` call over all still-active questions.

Rows (one per retrieved chunk) feed the precomputed retrieval table (nanochat.retrieval.precompute):
    {query_index, hop, hop_query, rank (1-based within the hop), chunk_index, chunk_id, doc_id, score}
`retrieval_message(...)` renders them as the guide's multi_hop retrieval message.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tqdm import tqdm

from nanochat.common import print0
from nanochat.retrieval.hop_strategies import (DEFAULT_STRATEGY, extract_entities, focus_sentences,  # noqa: F401
                                              next_hop_query, offline_choices, resolve_strategy)


# -----------------------------------------------------------------------------
# The hop loop

def multihop_retrieve(manager, questions: list[str], max_hops: int = 3, top_k_per_hop: int = 3,
                      strategy: str = DEFAULT_STRATEGY, query_fn=None, batch_size: int = 256,
                      show_progress: bool = True) -> list[dict]:
    """Batched multi-hop retrieval -> rows (see module docstring), ordered by (question, hop, rank).

    manager: a RetrievalManager (or anything with `.search_batch(queries, k)` and `.kb.chunks`).
    """
    if max_hops < 1 or top_k_per_hop < 1:
        raise ValueError(f"max_hops={max_hops}, top_k_per_hop={top_k_per_hop}: both must be >= 1")
    strategy = resolve_strategy(strategy)
    chunks = manager.kb.chunks
    n_chunks = len(chunks)
    cid, did = chunks["id"].to_numpy(), chunks["doc_id"].to_numpy()
    titles, contents = chunks["title"].to_numpy(), chunks["content"].to_numpy()
    seen: list[set[int]] = [set() for _ in questions]
    current = list(questions)             # query of the coming hop, per question
    active = list(range(len(questions)))  # questions still hopping
    rows: list[dict] = []
    bar = tqdm(total=max_hops, desc="multi-hop", unit="hop", disable=not show_progress)
    for hop in range(1, max_hops + 1):
        if not active:
            break
        # seen sets hold <= (hop-1)*k chunks, so this depth still leaves k unseen ones when they exist
        depth = min(n_chunks, top_k_per_hop * hop)
        still = []
        for start in range(0, len(active), batch_size):
            batch = active[start:start + batch_size]
            idx, scores = manager.search_batch([current[q] for q in batch], depth)  # (Qb, depth) each
            idx, scores = np.asarray(idx), np.asarray(scores)
            for row_i, q in enumerate(batch):
                new = [(int(i), float(s)) for i, s in zip(idx[row_i], scores[row_i]) if i >= 0 and int(i) not in seen[q]]
                new = new[:top_k_per_hop]
                if not new:
                    continue  # nothing new: this question stops here
                for rank, (i, s) in enumerate(new, 1):
                    seen[q].add(i)
                    rows.append({"query_index": q, "hop": hop, "hop_query": current[q], "rank": rank,
                                 "chunk_index": i, "chunk_id": cid[i], "doc_id": did[i], "score": s})
                if hop < max_hops:
                    docs = [{"title": titles[i], "content": contents[i]} for i, _ in new]
                    current[q] = next_hop_query(questions[q], docs, strategy, query_fn)
                    still.append(q)
        active = still
        bar.update(1)
    bar.close()
    rows.sort(key=lambda r: (r["query_index"], r["hop"], r["rank"]))
    return rows


# -----------------------------------------------------------------------------
# Rendering: rows -> the guide's multi_hop retrieval message

def group_hops(rows, key: str = "query_id") -> dict:
    """Rows (dicts or a DataFrame) -> {key value: [(hop, hop_query, [(chunk_id, doc_id, score), ...]), ...]}."""
    if hasattr(rows, "to_dict"):
        rows = rows.sort_values([key, "hop", "rank"], kind="stable").to_dict("records")
    out: dict = {}
    for r in rows:
        hops = out.setdefault(r[key], [])
        if not hops or hops[-1][0] != int(r["hop"]):
            hops.append((int(r["hop"]), r["hop_query"], []))
        hops[-1][2].append((r["chunk_id"], r["doc_id"], float(r["score"])))
    return out


def retrieval_message(hops: list[tuple], doc_for: Callable[[str, float], dict]) -> dict:
    """[(hop, query, [(chunk_id, doc_id, score)])] -> {"role": "retrieval", "multi_hop": True, "hops": [...]}.

    doc_for(chunk_id, score) gives the document dict (title, content, ...), e.g. raft.ChunkStore.doc.
    """
    return {"role": "retrieval", "multi_hop": True,
            "hops": [{"hop": h, "query": q, "documents": [doc_for(c, s) for c, _, s in hits]} for h, q, hits in hops]}


def engine_query_writer(engine, max_tokens: int = 32, max_doc_words: int = 60) -> Callable[[str, list[dict]], str]:
    """strategy="model": the model itself writes the follow-up query from the question and the hop's documents."""
    def write(question: str, documents: list[dict]) -> str:
        docs = [{**d, "content": " ".join((d.get("content") or "").split()[:max_doc_words])} for d in documents]
        conv = {"messages": [
            {"role": "system", "content": "Write one search query for the information still missing to answer the question."},
            {"role": "retrieval", "documents": docs}, {"role": "user", "content": question}]}
        text, _ = engine.generate_from_conversation(conv, max_tokens=max_tokens, temperature=0.0)
        return f"{question} {text.strip()}"
    return write


def main(argv=None) -> int:
    """Show the hops for a few questions: python -m nanochat.retrieval.multihop --knowledge_base KB --question "..." """
    from nanochat.cli import ArgumentParser
    from nanochat.retrieval.registry import RETRIEVERS
    p = ArgumentParser(description="Multi-hop retrieval for one or more questions (prints hops)")
    p.add_argument("--knowledge_base", required=True, help="KB directory")
    p.add_argument("--retriever_type", default="bm25", choices=list(RETRIEVERS), help="index to search")
    p.add_argument("--question", action="append", required=True, help="question (repeat for several)")
    p.add_argument("--max_hops", type=int, default=3, help="retrieval rounds")
    p.add_argument("--top_k_per_hop", type=int, default=3, help="new documents per round")
    p.add_argument("--hop_strategy", default=DEFAULT_STRATEGY, choices=offline_choices(),
                   help="follow-up query strategy (model: from Python, with a query writer)")
    args = p.parse_args(argv)
    from nanochat.retrieval import RetrievalManager
    manager = RetrievalManager(retriever_type=args.retriever_type, knowledge_base_path=args.knowledge_base)
    rows = multihop_retrieve(manager, args.question, args.max_hops, args.top_k_per_hop, args.hop_strategy,
                             show_progress=False)
    for qi, hops in group_hops(rows, key="query_index").items():
        print0(f"Q: {args.question[qi]}")
        for h, q, hits in hops:
            print0(f"  hop {h}: {q}")
            for c, d, s in hits:
                print0(f"    {s:8.3f}  {c}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
