"""The bundled synthetic world (the default DAG's data): do tuned retrievers raise recall@2 over the default run's
BM25 top 2, and what would the optional stages cost in the default DAG (10-minute budget on 2 CPU cores)?

    flock /tmp/nanochat-heavy.lock python -m bench.retriever_tuning_synthetic [--train_questions 1500]

Same world and chunking as config/config.yaml (seed 0, 2,000 entities, 128/16-token chunks). Retrievers are
trained on (a seeded sample of) the train questions, selected on val, and scored on the 700 test questions with
precompute's recall@k (share of gold documents among the top k; two-hop questions have two). Stage times are
measured here; the default DAG's cost is extrapolated from them to its 7,000 precomputed questions.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from nanochat.common import atomic_write_json, print0

CHUNKING = {"chunk_tokens": 128, "chunk_overlap": 16}  # config/config.yaml knowledge_bases.synthetic


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def recall(kb_path, kind: str, test_file, out: Path, **kw) -> dict:
    """recall@1/2/5/10 of test questions and queries/s, through precompute (as a run would), plus recall@2 of the
    one-hop and the two-hop questions apart (a two-hop question's second document is reached through the first)."""
    import pandas as pd
    from nanochat.data.queries import load_queries
    from nanochat.retrieval.precompute import precompute_retrieval, recall_at_k
    meta = precompute_retrieval(kb_path, kind, {"test": test_file}, 10, out, force=True, **kw)
    table, queries = pd.read_parquet(out), load_queries(test_file)
    by_hops = {h: recall_at_k(table, [q for q in queries if int(q.get("hops") or 1) == h], [2]).get("recall@2")
               for h in (1, 2)}
    return {**meta["recall"]["test"], "recall@2 1-hop": by_hops[1], "recall@2 2-hop": by_hops[2],
            "q/s": meta["queries_per_second"]}


def single_hop_ceiling(queries: list[dict], documents: dict) -> float:
    """Best recall@2 any single-hop retriever can reach: a two-hop question's second document never shares a word
    with the question's entity (checked here), so at most its first document is found from the question."""
    share = []
    for q in queries:
        gold = q.get("doc_ids") or []
        findable = [d for i, d in enumerate(gold) if i == 0 or q.get("entity", "").lower() in documents[d].lower()]
        share.append(min(len(findable), 2) / len(gold))
    return float(sum(share) / len(share))


def sample(rows: list[dict], n: int, seed: int = 0) -> list[dict]:
    from nanochat.retrieval.pairs import hash_split
    if n <= 0 or n >= len(rows):
        return rows
    keep = hash_split([r["id"] for r in rows], {"keep": n / len(rows), "rest": 1 - n / len(rows)}, seed)
    return [r for r in rows if keep[r["id"]] == "keep"]


def main(argv=None):
    from nanochat.cli import ArgumentParser
    from nanochat.data.jsonl import read_jsonl
    from nanochat.data.queries import load_queries
    from nanochat.data.synthetic import generate_world
    from nanochat.retrieval.finetune import finetune_embedder
    from nanochat.retrieval.hybrid import apply_tuned_fusion
    from nanochat.retrieval.kb import KnowledgeBase, build_knowledge_base
    from nanochat.retrieval.rerank import train_reranker
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work_dir", default="/tmp/nanochat_bench/retriever_tuning_synthetic", help="cache")
    p.add_argument("--n_entities", type=int, default=2000, help="world size (2000 = the default config's)")
    p.add_argument("--train_questions", type=int, default=1500, help="train questions used (seeded sample; 0 = all 5,600)")
    p.add_argument("--val_questions", type=int, default=300, help="val questions used for selection (0 = all 700)")
    p.add_argument("--epochs", type=int, default=1, help="embedder epochs")
    p.add_argument("--lr", type=float, default=1e-4, help="embedder learning rate")
    p.add_argument("--rerank_depth", type=int, default=10, help="BM25 hits the cross-encoder reorders")
    p.add_argument("--output", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    work = Path(args.work_dir)
    world = work / "world"
    if not (world / "manifest.json").is_file():
        generate_world(world, seed=0, n_entities=args.n_entities)
    train = sample(load_queries(world / "queries_train.jsonl"), args.train_questions)
    val = sample(load_queries(world / "queries_val.jsonl"), args.val_questions)
    test_file = world / "queries_test.jsonl"
    cost, res = {}, {}

    def kb_at(path, **kw):
        if (path / "manifest.json").is_file():
            return KnowledgeBase.load(path, verify=False), None
        return timed(lambda: build_knowledge_base(world / "documents.jsonl", path, ["hybrid"], validation="lenient",
                                                  show_progress=False, **CHUNKING, **kw))
    kb0, cost["stock KB (bm25 + embed + dense + hybrid)"] = kb_at(work / "kb_stock")
    print0(f"world: {kb0.manifest['counts']}; train {len(train)}, val {len(val)} questions")
    for kind in ("bm25", "dense", "hybrid"):
        res[f"{kind} stock"] = recall(kb0.path, kind, test_file, work / f"{kind}_stock.parquet")

    rec, cost["fine-tune embedder"] = timed(lambda: finetune_embedder(
        kb0, train, val, work / "embedder", epochs=args.epochs, lr=args.lr, show_progress=False))
    kb1, cost["re-embed + index with the fine-tuned encoder"] = timed(lambda: build_knowledge_base(
        world / "documents.jsonl", work / "kb_tuned", ["hybrid"], model=str(work / "embedder"), validation="lenient",
        show_progress=False, **CHUNKING))
    kb1, cost["tune hybrid weight on val"] = timed(lambda: apply_tuned_fusion(kb1, val))
    w = kb1.manifest["retrievers"]["hybrid"]["settings"]["dense_weight"]
    res["dense fine-tuned"] = recall(kb1.path, "dense", test_file, work / "dense_tuned.parquet")
    res[f"hybrid fine-tuned w={w} (val)"] = recall(kb1.path, "hybrid", test_file, work / "hybrid_tuned.parquet")

    rr, cost["train reranker"] = timed(lambda: train_reranker(
        kb0, train, val, work / "reranker", epochs=1, lr=1e-4, max_length=128, hard_negatives=3, show_progress=False))
    key = f"bm25 + rerank top {args.rerank_depth}"
    res[key] = recall(kb0.path, "bm25", test_file, work / "bm25_rr.parquet", rerank_model=work / "reranker",
                      rerank_depth=args.rerank_depth)

    print0(f"\nsynthetic world, {json.loads((world / 'manifest.json').read_text())['n_queries']['test']} test questions "
           f"(default run: bm25 top 2)")
    cols = ("recall@1", "recall@2", "recall@2 1-hop", "recall@2 2-hop", "recall@10")
    print0(f"{'retriever':<34}" + "".join(f"{c:>16}" for c in cols) + f"{'q/s':>10}")
    for name, r in res.items():
        print0(f"{name:<34}" + "".join(f"{r[c]:>16.4f}" for c in cols) + f"{r['q/s']:>10}")
    base = res["bm25 stock"]["recall@2"]
    best = max(res, key=lambda k: res[k]["recall@2"])
    docs = {d["id"]: d["content"] for _, d in read_jsonl(world / "documents.jsonl", what="documents")}
    ceiling = single_hop_ceiling(load_queries(test_file), docs)
    print0(f"best recall@2: {best} {res[best]['recall@2']:.4f} vs bm25 {base:.4f} ({res[best]['recall@2'] - base:+.4f}); "
           f"single-hop ceiling {ceiling:.4f} (every one-hop document and the first of every two-hop pair)")
    print0(f"embedder val nDCG@10 by epoch {rec['val_by_epoch']} -> epoch {rec['selected_epoch']}; reranker val "
           f"{rr['val_by_epoch']} (epoch 0 = candidates' order)")
    n_dag = sum(len(load_queries(world / f"queries_{s}.jsonl")) for s in ("train", "val", "test"))
    rr_dag = n_dag / res[key]["q/s"]
    print0(f"\nstage cost (measured here; the DAG precomputes {n_dag:,} questions):")
    for name, s in cost.items():
        if s is not None:
            print0(f"  {name:<48}{s:>8.0f}s")
    print0(f"  {f'rerank precompute, {n_dag:,} questions (extrapolated)':<48}{rr_dag:>8.0f}s")
    if args.output:
        atomic_write_json(args.output, {"recall": res, "single_hop_ceiling": ceiling, "cost_s": cost,
                                        "rerank_dag_s": rr_dag, "finetune": rec, "reranker": rr})
    return res


if __name__ == "__main__":
    main()
