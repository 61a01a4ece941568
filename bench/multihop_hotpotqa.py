"""Multi-hop vs single-hop retrieval on the shared HotpotQA dev subset, at the same document budget.

Metric: the rate at which BOTH supporting paragraphs are among the retrieved documents.
    single top 10               one search, 10 documents
    <strategy> 5+5              hop 1 top 5, hop 2 (follow-up query by strategy) top 5 new = 10 documents
    single top 20 (reference)   twice the budget

    python -m bench.multihop_hotpotqa [--types bm25,dense,hybrid,simple] [--work_dir /tmp/hotpotqa_bench]

Builds (once, cached in --work_dir) the corpus with nanochat.hotpotqa and a KB with every index type.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from nanochat.cli import ArgumentParser
from nanochat.common import atomic_write_json
from nanochat.multihop import multihop_retrieve

STRATEGIES = ("titles", "passage", "entities")


def both_found(found: dict[int, set], gold: list[set]) -> float:
    return float(np.mean([g <= found.get(i, set()) for i, g in enumerate(gold)]))


def single_hop(manager, questions: list[str], k: int) -> dict[int, set]:
    idx, _ = manager.search_batch(questions, k)
    doc_ids = manager.kb.chunks["doc_id"].to_numpy()
    return {i: {doc_ids[j] for j in row if j >= 0} for i, row in enumerate(np.asarray(idx))}


def multi_hop(manager, questions: list[str], strategy: str, k: int) -> dict[int, set]:
    out: dict[int, set] = {}
    for r in multihop_retrieve(manager, questions, max_hops=2, top_k_per_hop=k, strategy=strategy, show_progress=False):
        out.setdefault(r["query_index"], set()).add(r["doc_id"])
    return out


def main(argv=None) -> int:
    p = ArgumentParser(description="HotpotQA: both supporting paragraphs retrieved, single vs multi-hop")
    p.add_argument("--input", default=str(Path(__file__).resolve().parents[2] / "shared/data/hotpotqa/dev.jsonl"),
                   help="HotpotQA JSONL")
    p.add_argument("--types", default="bm25,dense,hybrid,simple", help="retriever types, comma-separated")
    p.add_argument("--work_dir", default="/tmp/hotpotqa_bench", help="cache for the converted corpus and KB")
    p.add_argument("--output", default=None, help="write the results JSON here too")
    args = p.parse_args(argv)
    from nanochat.hotpotqa import convert_hotpotqa
    from nanochat.queries import load_queries
    from nanochat.retrieval import RetrievalManager, build_knowledge_base
    from nanochat.retrieval.kb import KnowledgeBase

    work = Path(args.work_dir)
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    if not (work / "manifest.json").is_file():
        convert_hotpotqa(args.input, work)
    kb_dir = work / "kb"
    have = set(KnowledgeBase.load(kb_dir, verify=False).retriever_types) if (kb_dir / "manifest.json").is_file() else set()
    if not set(types) <= have:
        build_knowledge_base(work / "documents.jsonl", kb_dir, retriever_types=sorted(set(types) | have),
                             chunk_tokens=512, chunk_overlap=0)
    queries = load_queries(work / "queries_all.jsonl")
    questions, gold = [q["question"] for q in queries], [set(q["doc_ids"]) for q in queries]
    results = {"n_questions": len(queries), "budget": 10, "rates": {}, "seconds": {}}
    for t in types:
        m = RetrievalManager(retriever_type=t, knowledge_base_path=str(kb_dir), verify=False)
        t0 = time.time()
        rates = {"single top 10": both_found(single_hop(m, questions, 10), gold)}
        for s in STRATEGIES:
            rates[f"{s} 5+5"] = both_found(multi_hop(m, questions, s, 5), gold)
        rates["single top 20 (reference)"] = both_found(single_hop(m, questions, 20), gold)
        results["rates"][t] = rates
        results["seconds"][t] = round(time.time() - t0, 1)
    rows = list(next(iter(results["rates"].values())))
    print(f"HotpotQA shared dev, {len(queries)} questions: both supporting paragraphs among the retrieved documents")
    print(f"{'setting':<28}" + "".join(f"{t:>9}" for t in types))
    for r in rows:
        print(f"{r:<28}" + "".join(f"{results['rates'][t][r]:>9.3f}" for t in types))
    best = {t: max(STRATEGIES, key=lambda s: results["rates"][t][f"{s} 5+5"]) for t in types}
    gain = {t: results["rates"][t][f"{best[t]} 5+5"] - results["rates"][t]["single top 10"] for t in types}
    print("best multi-hop gain over single top 10: " + ", ".join(f"{t} {gain[t]:+.3f} ({best[t]})" for t in types))
    results["best_gain"] = {t: {"strategy": best[t], "gain": round(gain[t], 4)} for t in types}
    if args.output:
        atomic_write_json(args.output, results)
    print(json.dumps(results["seconds"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
