"""Where a fine-tune's data comes from when the workflow does not hand it shards: query files beside the KB
(or questions generated from the documents), precomputed retrieval, then nanochat.rag.dataset's shards
(single-hop for RAG, multi_hop for REFRAG), exactly as the workflow's rules make them."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from nanochat.common import atomic_path, print0

logger = logging.getLogger("nanochat.train")


def resolve_query_files(kb_path, queries_train=None, queries_val=None) -> tuple[dict, str]:
    """({split: path}, how they were found): explicit flags, else queries_*.jsonl beside the KB (the
    example mode writes them there) or inside it; ({}, "documents") when none exist."""
    if queries_train:
        files = {"train": Path(queries_train)}
        if queries_val:
            files["val"] = Path(queries_val)
        for split, p in files.items():
            if not p.is_file():
                raise FileNotFoundError(f"--queries_{split}: file not found: {p}")
        return files, "flags"
    kb_path = Path(kb_path)
    for where in (kb_path.parent, kb_path):
        if (where / "queries_train.jsonl").is_file():
            files = {"train": where / "queries_train.jsonl"}
            if (where / "queries_val.jsonl").is_file():
                files["val"] = where / "queries_val.jsonl"
            return files, f"files beside the KB ({where})"
    return {}, "documents"

def build_rag_dataset(kb_path, args, dataset_dir, work_dir, tokenizer) -> Path:
    """Precompute retrieval for the queries once, then let nanochat.rag.raft write the shards.

    Without query files the questions are built from the documents (nanochat.data.doc_questions).
    Uses the modules' own CLIs so the flags here are exactly the workflow's.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    files, how = resolve_query_files(kb_path, args.queries_train, args.queries_val)
    if not files:
        from nanochat.data import doc_questions
        doc_questions.main(["--knowledge_base", str(kb_path), "--seed", str(args.seed), "--output", str(work_dir)])
        files = {"train": work_dir / "queries_train.jsonl", "val": work_dir / "queries_val.jsonl"}
        how = "questions built from the documents (nanochat.data.doc_questions)"
    logger.info("rag_finetune: training queries from %s: %s", how, {k: str(v) for k, v in files.items()})
    print0(f"queries: {how}")
    if "val" not in files:  # hold out 10% of train queries for validation loss
        files = split_train_val(files["train"], work_dir, seed=args.seed)
    tok_dir = work_dir / "tokenizer"
    tokenizer.save(str(tok_dir))
    from nanochat.retrieval import precompute
    from nanochat.rag import dataset
    retrieval = work_dir / "retrieval.parquet"
    precompute.main(["--knowledge_base", str(kb_path), "--retriever_type", args.retriever_type, "--queries",
                     *[f"{k}={v}" for k, v in files.items()], "--k_max", str(max(20, args.top_k)),
                     "--output", str(retrieval)])
    dataset.main(["--knowledge_base", str(kb_path), "--retrieval", str(retrieval), "--queries_train", str(files["train"]),
               "--queries_val", str(files["val"]), "--tokenizer", str(tok_dir), "--top_k", str(args.top_k),
               "--p_gold", str(args.p_gold), "--max_seq_len", str(args.max_seq_len),
               "--max_doc_length", str(args.max_doc_length), "--seed", str(args.seed), "--output", str(dataset_dir)])
    return Path(dataset_dir)

def build_refrag_dataset(kb, args, dataset_dir, work_dir, tokenizer) -> Path:
    """Multi-hop retrieval for the queries (precomputed here unless --retrieval names a table), then
    nanochat.rag.dataset's multi_hop shards: what the workflow's build_dataset rule makes for a refrag run."""
    from nanochat.rag.dataset import build_multihop_dataset
    from nanochat.retrieval.precompute import load_precomputed, precompute_retrieval
    work_dir = Path(work_dir)
    files, how = resolve_query_files(kb.path, args.queries_train, args.queries_val)
    if not files:
        raise FileNotFoundError(f"REFRAG needs multi-hop training questions: pass --queries_train "
                                f"(none found beside {kb.path})")
    print0(f"queries: {how}")
    if "val" not in files:
        files = split_train_val(files["train"], work_dir, seed=args.seed)
    table = Path(args.retrieval) if args.retrieval else work_dir / "retrieval_multihop.parquet"
    if not args.retrieval:
        precompute_retrieval(kb.path, args.retriever_type, {k: str(v) for k, v in files.items()}, args.top_k_per_hop,
                             table, max_hops=args.max_hops, top_k_per_hop=args.top_k_per_hop, strategy=args.hop_strategy)
    build_multihop_dataset(kb.chunks, load_precomputed(table), files, tokenizer, dataset_dir, args.top_k_per_hop,
                           args.p_gold, args.max_seq_len, None if args.max_doc_length < 0 else args.max_doc_length,
                           args.seed, provenance={"kb_id": kb.kb_id, "retrieval": str(table), "max_hops": args.max_hops,
                                                  "hop_strategy": args.hop_strategy})
    return Path(dataset_dir)

def split_train_val(train_path, work_dir, seed: int = 0, val_frac: float = 0.1) -> dict:
    """Hold out a seeded share of the training queries as a validation file (whole lines, unchanged)."""
    lines = [l for l in Path(train_path).read_text(encoding="utf-8").splitlines() if l.strip()]
    order = np.random.default_rng(seed).permutation(len(lines))
    n_val = max(1, int(len(lines) * val_frac))
    out = {}
    for split, idx in (("train", sorted(order[n_val:])), ("val", sorted(order[:n_val]))):
        out[split] = Path(work_dir) / f"queries_{split}.jsonl"
        with atomic_path(out[split]) as tmp:
            tmp.write_text("".join(lines[i] + "\n" for i in idx), encoding="utf-8")
    return out

def load_base_tasks(spec: str | None, task_samples: int, n_rag: int, tokenizer, max_seq_len: int, seed: int = 0) -> list:
    """Rendered (ids, mask) general conversations mixed into training (nanochat.rag.raft finds and validates them).

    spec None is the guide's default "SmolTalk": used if cached locally, else one warning and RAG data only;
    an explicitly named task that is not cached is an error; "none" turns mixing off. task_samples -1 takes
    one general conversation per 4 RAG examples.
    """
    from nanochat.rag.base_tasks import load_base_conversations
    if spec is None:
        spec = "auto"
    spec = ",".join("smoltalk" if t.strip().lower() == "smoltalk" else t.strip() for t in spec.split(","))
    n = task_samples if task_samples >= 0 else max(1, n_rag // 4)
    convs = load_base_conversations(spec if spec.lower() != "none" else "none", n, seed)
    out = []
    for c in convs:
        ids, mask, info = tokenizer.render_conversation(c, max_tokens=max_seq_len + 1, on_overflow="report")
        if not info["cut_tokens"]:
            out.append((ids, mask))
    return out
