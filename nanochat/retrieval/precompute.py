"""Retrieve once, train and evaluate many times: a Parquet table of top-K_max hits per query.

Training and evaluation read this table and never call a retriever in their loops; any
k <= K_max is a slice (`slice_top_k`). The table is keyed by (query file sha256s, KB id,
retriever type, K_max, hop settings) recorded in `<output>.meta.json`; rerunning with the
same key is a no-op, so Snakemake/DVC reruns and repeated fine-tunes cost nothing.

Columns: split, query_id, hop, hop_query, rank (1-based), chunk_id, doc_id, score.

Sharded by query blocks (a run's `precompute_shards: N` in the workflow): `--block I-of-N` retrieves the I-th
contiguous block of every split, `--gather BLOCK...` joins the blocks into the table and meta one job writes
(same bytes: each query's hits do not depend on the other queries, dense query encoding included).

    python -m nanochat.retrieval.precompute --knowledge_base KB --retriever_type bm25 \
        --queries train=q_train.jsonl val=q_val.jsonl --k_max 20 --output retrieval.parquet
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from nanochat.cli import ArgumentParser, output_file
from nanochat.retrieval.hop_strategies import offline_choices
from nanochat.retrieval.registry import RETRIEVERS
from nanochat.common import atomic_path, atomic_write_json, sha256_file, print0
from nanochat.data.queries import load_queries

log = logging.getLogger(__name__)

COLUMNS = ["split", "query_id", "hop", "hop_query", "rank", "chunk_id", "doc_id", "score"]
RECALL_KS = (1, 3, 5, 10)


def meta_path(output_path) -> Path:
    return Path(str(output_path) + ".meta.json")


def retrieval_key(query_files: dict, kb_id: str, retriever_type: str, k_max: int, max_hops: int,
                  top_k_per_hop: int, strategy: str, rerank: dict | None = None,
                  search_settings: dict | None = None) -> dict:
    """Everything that determines the table's contents (compared for reuse)."""
    key = {"query_sha256": {s: sha256_file(p) for s, p in sorted(query_files.items())}, "kb_id": kb_id,
           "retriever_type": retriever_type, "k_max": int(k_max), "max_hops": int(max_hops)}
    if max_hops > 1:
        key.update(top_k_per_hop=int(top_k_per_hop), strategy=strategy)
    if rerank:
        key["rerank"] = rerank  # the reranker's content id and depth
    if search_settings:
        key["search"] = dict(sorted(search_settings.items()))
    return key


def use_reranker(manager, model_dir, depth: int) -> dict:
    """Put a cross-encoder (python -m nanochat.retrieval.rerank) behind the manager's retriever; returns its key."""
    from nanochat.retrieval.kb import passage_texts
    from nanochat.retrieval.rerank import RerankedRetriever, Reranker
    reranker = Reranker(model_dir)
    manager.retriever = RerankedRetriever(manager.retriever, reranker, passage_texts(manager.kb.chunks), depth)
    return {"model": reranker.id, "depth": int(depth)}


def _single_hop(manager, split: str, queries: list[dict], k_max: int, batch_size: int) -> pd.DataFrame:
    chunks = manager.kb.chunks
    chunk_ids, doc_ids = chunks["id"].to_numpy(), chunks["doc_id"].to_numpy()
    parts = []
    for i in tqdm(range(0, len(queries), batch_size), desc=f"retrieve {split}", unit="batch"):
        batch = queries[i:i + batch_size]
        idx, scores = manager.search_batch([q["question"] for q in batch], k_max)  # (Qb, k) each
        idx, scores = np.asarray(idx), np.asarray(scores)
        qi, ri = np.nonzero(idx >= 0)  # padded misses are -1
        hit = idx[qi, ri]
        parts.append(pd.DataFrame({
            "split": split, "query_id": [batch[j]["id"] for j in qi], "hop": 1,
            "hop_query": [batch[j]["question"] for j in qi], "rank": ri + 1,
            "chunk_id": chunk_ids[hit], "doc_id": doc_ids[hit], "score": scores[qi, ri].astype(np.float32)}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)


def _multi_hop(manager, split: str, queries: list[dict], max_hops: int, top_k_per_hop: int,
               strategy: str) -> pd.DataFrame:
    """Delegate to nanochat.retrieval.multihop; its rows carry query_index (position in `questions`)."""
    from nanochat.retrieval.multihop import multihop_retrieve
    rows = multihop_retrieve(manager, [q["question"] for q in queries], max_hops=max_hops,
                             top_k_per_hop=top_k_per_hop, strategy=strategy)
    df = pd.DataFrame(list(rows))
    if "query_id" not in df.columns:
        df["query_id"] = [queries[int(i)]["id"] for i in df["query_index"]]
    if "chunk_id" not in df.columns:
        df["chunk_id"] = manager.kb.chunks["id"].to_numpy()[df["chunk_index"].to_numpy()]
    if "doc_id" not in df.columns:
        df["doc_id"] = manager.kb.chunks["doc_id"].to_numpy()[df["chunk_index"].to_numpy()]
    df["split"] = split
    return df[COLUMNS]


def recall_at_k(table: pd.DataFrame, queries: list[dict], ks) -> dict:
    """Mean share of gold doc_ids found in the top-k chunks (all hops pooled; k applies per hop)."""
    gold = {q["id"]: set(q["doc_ids"]) for q in queries if q.get("doc_ids")}
    out = {"n_with_gold": len(gold)}
    if not gold:
        return out
    for k in ks:
        hits = table[table["rank"] <= k].groupby("query_id")["doc_id"].agg(set).to_dict()
        out[f"recall@{k}"] = round(float(np.mean([len(g & hits.get(q, set())) / len(g) for q, g in gold.items()])), 6)
    return out


def precompute_retrieval(kb_path, retriever_type: str, query_files: dict, k_max: int, output_path,
                         max_hops: int = 1, top_k_per_hop: int = 3, strategy: str = "append",
                         batch_size: int = 256, force: bool = False, manager=None, rerank_model=None,
                         rerank_depth: int = 20, block: str | None = None, search_settings: dict | None = None,
                         embedding_cache=None) -> dict:
    """Retrieve top k_max for every query of every split; write Parquet + meta; return the meta.

    `manager` (a RetrievalManager) may be passed to reuse a loaded KB; otherwise one is built
    from kb_path. Skips the work when output and meta exist with the same key (unless force).
    rerank_model: a cross-encoder directory; every search (each hop too) then returns the first stage's
    top rerank_depth reordered by it, so training and evaluation read the reranked order.
    block "I-of-N": only the I-th contiguous block of each split (join the blocks with gather_blocks).
    search_settings: load-time retriever settings (e.g. nprobe), part of the key.
    embedding_cache: dense query vectors come from / go to this cache (nanochat.retrieval.embed_cache).
    """
    if k_max < 1:
        raise ValueError(f"k_max={k_max}: must be >= 1")
    output_path = Path(output_path)
    if manager is None:
        from nanochat.retrieval import RetrievalManager
        manager = RetrievalManager(retriever_type=retriever_type, knowledge_base_path=str(kb_path),
                                   **(search_settings or {}))
    if embedding_cache:
        attach_embedding_cache(manager.retriever, embedding_cache)
    rerank = None
    if rerank_model:
        from nanochat.retrieval.embeddings import model_id
        rerank = {"model": model_id(rerank_model), "depth": int(rerank_depth)}
    key = retrieval_key(query_files, manager.kb.kb_id, retriever_type, k_max, max_hops, top_k_per_hop, strategy,
                        rerank, search_settings)
    if block:
        key["block"] = block
    mp = meta_path(output_path)
    if not force and output_path.is_file() and mp.is_file():
        old = json.loads(mp.read_text(encoding="utf-8"))
        if old.get("key") == key:
            log.info("retrieval table %s is up to date (same key); skipping", output_path)
            return {**old, "reused": True}
    if rerank:
        use_reranker(manager, rerank_model, rerank_depth)
    tables, recall, counts, seconds = [], {}, {}, {}
    for split, qpath in query_files.items():
        queries = load_queries(qpath)
        t0 = time.perf_counter()
        if block:
            from nanochat.retrieval.shards import parse_shard, shard_slice
            queries = queries[shard_slice(len(queries), *parse_shard(block))]
        counts[split] = len(queries)
        if max_hops > 1:
            t = _multi_hop(manager, split, queries, max_hops, top_k_per_hop, strategy)
        else:
            t = _single_hop(manager, split, queries, k_max, batch_size)
        seconds[split] = round(time.perf_counter() - t0, 2)
        top = k_max if max_hops == 1 else top_k_per_hop
        recall[split] = recall_at_k(t, queries, sorted({k for k in (*RECALL_KS, top) if k <= top}))
        tables.append(t)
    return _write_table(tables, output_path, {"key": key, "kb_path": str(kb_path)}, counts, recall, seconds)


def _write_table(tables: list, output_path, head: dict, counts: dict, recall: dict,
                 seconds: dict | None = None) -> dict:
    table = pd.concat(tables, ignore_index=True)[COLUMNS]
    table = table.astype({"hop": np.int16, "rank": np.int16, "score": np.float32})
    with atomic_path(output_path) as tmp:
        table.to_parquet(tmp, index=False)
    meta = {**head, "n_rows": len(table), "n_queries": counts, "recall": recall,
            "table_sha256": sha256_file(output_path)}
    if seconds:
        meta.update(seconds=seconds,
                    queries_per_second=round(sum(counts.values()) / max(sum(seconds.values()), 1e-9), 2))
    atomic_write_json(meta_path(output_path), meta)  # written last: its presence marks a complete table
    return meta


def gather_blocks(block_paths: list, query_files: dict, output_path) -> dict:
    """Join `--block` tables (in block order) into the table and meta a single job writes for all queries."""
    metas = [json.loads(meta_path(p).read_text(encoding="utf-8")) for p in block_paths]
    blocks = [m["key"].pop("block", None) for m in metas]
    if blocks != [f"{i}-of-{len(metas)}" for i in range(1, len(metas) + 1)]:
        raise ValueError(f"blocks {blocks}: expected 1-of-{len(metas)} .. {len(metas)}-of-{len(metas)} in order")
    if any(m["key"] != metas[0]["key"] or m["kb_path"] != metas[0]["kb_path"] for m in metas):
        raise ValueError("the blocks were retrieved with different KBs, queries or settings; re-run them")
    key = metas[0]["key"]
    if key["query_sha256"] != {s: sha256_file(p) for s, p in sorted(query_files.items())}:
        raise ValueError("the query files changed after the blocks were retrieved; re-run them")
    parts = [load_precomputed(p) for p in block_paths]
    tables, counts, recall = [], {}, {}
    for split, qpath in query_files.items():
        queries = load_queries(qpath)
        counts[split] = len(queries)
        t = pd.concat([part[part["split"] == split] for part in parts], ignore_index=True)
        top = key["k_max"] if key["max_hops"] == 1 else key["top_k_per_hop"]
        recall[split] = recall_at_k(t, queries, sorted({k for k in (*RECALL_KS, top) if k <= top}))
        tables.append(t)
    seconds = {s: round(sum(m.get("seconds", {}).get(s, 0.0) for m in metas), 2) for s in query_files}
    return _write_table(tables, output_path, {"key": key, "kb_path": metas[0]["kb_path"]}, counts, recall, seconds)


def attach_embedding_cache(retriever, cache_dir) -> None:
    """Let the dense part of a retriever (dense, or hybrid's) encode queries through the embedding cache."""
    for r in (retriever, getattr(retriever, "dense", None)):
        if r is not None and hasattr(r, "encode_queries"):
            r.embedding_cache = str(cache_dir)


def load_precomputed(path) -> pd.DataFrame:
    """Read a retrieval table, checking its columns (clear error for a wrong or partial file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"retrieval table not found: {path} (run python -m nanochat.retrieval.precompute first)")
    table = pd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: not a retrieval table: missing column(s) {missing}")
    return table


def slice_top_k(table: pd.DataFrame, k: int) -> pd.DataFrame:
    """The top-k hits per (query, hop): rows with rank <= k, order kept."""
    if k < 1:
        raise ValueError(f"k={k}: must be >= 1")
    k_max = int(table["rank"].max()) if len(table) else 0
    if k > k_max:
        log.warning("slice_top_k: k=%d exceeds the table's largest rank %d; returning all rows", k, k_max)
    return table[table["rank"] <= k]


def _parse_split_files(items: list[str]) -> dict:
    out = {}
    for item in items:
        split, sep, path = item.partition("=")
        if not sep or not split or not path:
            raise SystemExit(f"--queries: expected split=path, got {item!r}")
        out[split] = path
    return out


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="Precompute top-K_max retrieval for every query of every split.")
    p.add_argument("--knowledge_base", default=None, help="KB directory (python -m nanochat.retrieval); not with --gather")
    p.add_argument("--retriever_type", default="bm25", choices=list(RETRIEVERS), help="index to search")
    p.add_argument("--queries", nargs="+", required=True, help="split=path pairs, e.g. train=q.jsonl val=v.jsonl")
    p.add_argument("--k_max", type=int, default=20, help="hits kept per query; any k <= k_max is a slice")
    p.add_argument("--max_hops", type=int, default=1, help="1 = single hop; >1 uses nanochat.retrieval.multihop")
    p.add_argument("--top_k_per_hop", type=int, default=3, help="documents per hop (max_hops > 1)")
    p.add_argument("--strategy", default="append", choices=offline_choices(),
                   help="follow-up query strategy (nanochat.retrieval.hop_strategies)")
    p.add_argument("--batch_size", type=int, default=256, help="queries per search_batch call")
    p.add_argument("--rerank_model", default=None, help="cross-encoder directory (python -m nanochat.retrieval.rerank)")
    p.add_argument("--rerank_depth", type=int, default=20, help="first-stage hits the cross-encoder reorders")
    p.add_bool("--force", default=False, help="recompute even when the key matches")
    p.add_argument("--block", default=None, help="I-of-N: only the I-th contiguous block of each split's queries")
    p.add_argument("--gather", nargs="+", default=None,
                   help="join these --block tables (in order) into --output instead of retrieving")
    p.add_argument("--embedding_cache", default=None, help="dense query vectors through this embedding cache")
    from nanochat.retrieval.dense import add_dense_flags
    add_dense_flags(p, build=False)
    p.add_argument("--output", type=output_file, required=True, help="output .parquet (meta at <output>.meta.json)")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.gather and not args.knowledge_base:
        parser.error("--knowledge_base is required (except with --gather)")
    if args.gather:
        meta = gather_blocks(args.gather, _parse_split_files(args.queries), args.output)
        print0(f"gathered {len(args.gather)} blocks into {args.output}: {meta['n_rows']} rows; "
               f"recall {json.dumps(meta['recall'])}")
        return 0
    from nanochat.retrieval.dense import dense_flag_settings
    search = dense_flag_settings(args, build=False) if args.retriever_type in ("dense", "hybrid") else None
    meta = precompute_retrieval(args.knowledge_base, args.retriever_type, _parse_split_files(args.queries),
                                args.k_max, args.output, max_hops=args.max_hops, top_k_per_hop=args.top_k_per_hop,
                                strategy=args.strategy, batch_size=args.batch_size, force=args.force,
                                rerank_model=args.rerank_model, rerank_depth=args.rerank_depth,
                                block=args.block, search_settings=search or None, embedding_cache=args.embedding_cache)
    status = "reused" if meta.get("reused") else "wrote"
    print0(f"{status} {args.output}: {meta['n_rows']} rows; recall {json.dumps(meta['recall'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
