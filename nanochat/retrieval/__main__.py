"""The guide's knowledge-base CLI: build a KB, or query one from the shell.

Build (documents -> validate -> chunk -> [embed] -> index):
    python -m nanochat.retrieval --documents data/my_documents.jsonl --output data/my_kb --type simple
    python -m nanochat.retrieval --documents docs.jsonl --output kb --type dense --model all-MiniLM-L6-v2
Build from stage outputs (the Snakemake DAG):
    python -m nanochat.retrieval --chunks chunks.parquet --embeddings embeddings.npy --output kb --type hybrid
Query:
    python -m nanochat.retrieval --knowledge_base data/my_kb --type bm25 --query "return policy" --top_k 3
Large KBs (dense): --index ivf_pq --pq_m 48 at build (auto picks by size), --nprobe 64 --ef_search 256 --refine 4 at
build (recorded) or at query time (override).
"""
from __future__ import annotations

import sys

from nanochat.common import print0
from nanochat.cli import ArgumentParser, output_dir
from nanochat.data.documents import VALIDATION_MODES
from nanochat.retrieval.registry import RETRIEVERS


def build_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m nanochat.retrieval", description="Build or query a nanochat knowledge base.")
    # --- what to build from
    p.add_argument("--documents", default=None, help="documents JSONL (or a folder of .md/.txt) to build a KB from")
    p.add_argument("--chunks", default=None, help="pre-made chunks.parquet (python -m nanochat.data.chunking) instead of --documents")
    p.add_argument("--embeddings", default=None, help="pre-computed embeddings.npy matching --chunks (python -m nanochat.retrieval.embeddings)")
    p.add_argument("--embedder_info", default=None, help="JSON file describing --embeddings (model, precision)")
    p.add_argument("--output", type=output_dir, default=None, help="KB directory to create or extend")
    # --- index settings
    p.add_argument("--type", default="simple", help=f"retriever type(s), comma-separated: {', '.join(RETRIEVERS)}")
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="sentence-transformers model for dense/hybrid")
    p.add_argument("--precision", default="auto", help="embedding precision: auto|fp32|bf16")
    p.add_argument("--chunk_tokens", type=int, default=256, help="max tokens per chunk (regex word/punct tokens)")
    p.add_argument("--chunk_overlap", type=int, default=32, help="tokens shared by consecutive chunks")
    p.add_argument("--validation", choices=VALIDATION_MODES, default="strict", help="lenient: skip bad records into --rejected")
    p.add_argument("--rejected", default=None, help="rejected records file (default: <output>/rejected.jsonl in lenient mode)")
    p.add_argument("--bm25_k1", type=float, default=1.5, help="BM25 term-frequency saturation")
    p.add_argument("--bm25_b", type=float, default=0.75, help="BM25 length normalisation (0 = none, 1 = full)")
    p.add_argument("--bm25_method", default="lucene", help="bm25s variant: lucene|robertson|atire|bm25l|bm25+")
    p.add_bool("--bm25_stemmer", default=True, help="Snowball English stemming for BM25")
    p.add_argument("--tune_fusion", default=None,
                   help="val questions (JSONL with doc_ids): tune the hybrid dense weight on them and record it in the KB")
    p.add_argument("--bm25_tokens", nargs="+", default=None,
                   help="per-shard BM25 token files of --chunks, in order (python -m nanochat.retrieval.shards bm25-tokens)")
    p.add_argument("--embedding_cache", default=None,
                   help="embedding cache directory (nanochat.retrieval.embed_cache): encode only chunks it lacks")
    from nanochat.retrieval.dense import add_dense_flags
    add_dense_flags(p)  # build: recorded in the KB; query: --nprobe/--ef_search/--refine override the search
    # --- query mode
    p.add_argument("--knowledge_base", default=None, help="query this KB instead of building one")
    p.add_argument("--query", action="append", default=None, help="query text (repeatable)")
    p.add_argument("--top_k", type=int, default=5, help="documents to show per query")
    return p


def run_query(args) -> int:
    from nanochat.retrieval import RetrievalManager
    if not args.query:
        print0("ERROR --knowledge_base needs at least one --query", file=sys.stderr)
        return 2
    from nanochat.retrieval.dense import dense_flag_settings
    search = dense_flag_settings(args, build=False) if args.type in ("dense", "hybrid") else {}
    manager = RetrievalManager(retriever_type=args.type, knowledge_base_path=args.knowledge_base, **search)
    for query, docs in zip(args.query, manager.retrieve_batch(args.query, top_k=args.top_k)):
        print0(f"Query: {query}")
        if not docs:
            print0("  (no matching documents)")
        for doc in docs:
            print0(f"Score: {doc.score:.3f} - {doc.title}  [{doc.id}]")
    return 0


def run_build(args) -> int:
    from pathlib import Path

    from nanochat.retrieval.dense import dense_flag_settings
    from nanochat.retrieval.kb import build_knowledge_base, build_knowledge_base_from_chunks
    types = [t.strip() for t in args.type.split(",") if t.strip()]
    dense = dense_flag_settings(args)
    settings = {"dense": dense} if dense else None
    bm25 = {"k1": args.bm25_k1, "b": args.bm25_b, "method": args.bm25_method, "stemmer": "english" if args.bm25_stemmer else None}
    if args.chunks:
        kb = build_knowledge_base_from_chunks(args.chunks, args.output, types, embeddings_path=args.embeddings,
                                              embedder_info=args.embedder_info, model=args.model, precision=args.precision,
                                              bm25_settings=bm25, retriever_settings=settings,
                                              embedding_cache=args.embedding_cache, bm25_tokens=args.bm25_tokens)
    else:
        rejected = args.rejected or (str(Path(args.output) / "rejected.jsonl") if args.validation == "lenient" else None)
        kb = build_knowledge_base(args.documents, args.output, types, model=args.model, chunk_tokens=args.chunk_tokens,
                                  chunk_overlap=args.chunk_overlap, validation=args.validation, precision=args.precision,
                                  bm25_settings=bm25, rejected_path=rejected, retriever_settings=settings,
                                  embedding_cache=args.embedding_cache)
    if args.tune_fusion:
        from nanochat.data.queries import load_queries
        from nanochat.retrieval.hybrid import apply_tuned_fusion
        if "hybrid" not in kb.retriever_types:
            raise ValueError("--tune_fusion tunes the hybrid index: build with --type hybrid")
        kb = apply_tuned_fusion(kb, load_queries(args.tune_fusion))
        h = kb.manifest["retrievers"]["hybrid"]["settings"]
        key = h["tuned"]["key"]
        print0(f"hybrid {key} tuned on {h['tuned']['questions']} val questions: {h[key]} "
               f"({h['tuned']['metric']} {h['tuned']['scores'][str(h[key])]:.4f})")
    c = kb.manifest["counts"]
    print0(f"Knowledge base ready: {kb.path} ({c['documents']} documents, {c['chunks']} chunks; "
          f"indexes: {', '.join(kb.retriever_types)}; kb_id {kb.kb_id[:12]})")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.knowledge_base and (not args.output or not (args.documents or args.chunks)):
        parser.error("build mode needs --output and --documents (or --chunks); query mode needs --knowledge_base and --query")
    try:
        return run_query(args) if args.knowledge_base else run_build(args)
    except Exception as e:  # user-facing CLI: one clear line instead of a traceback
        from nanochat.data.documents import DocumentValidationError
        from nanochat.retrieval.kb import KnowledgeBaseError
        if isinstance(e, (DocumentValidationError, KnowledgeBaseError, FileNotFoundError, ImportError, ValueError)):
            print0(f"ERROR {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
