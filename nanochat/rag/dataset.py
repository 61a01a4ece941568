"""A run's training dataset: RAFT conversations from precomputed retrieval, tokenized into shards.

    python -m nanochat.rag.dataset --knowledge_base KB --retrieval retrieval.parquet --queries_train q.jsonl \
        --queries_val v.jsonl --tokenizer TOKDIR --top_k 5 --p_gold 0.8 --output DATASET_DIR
    python -m nanochat.rag.dataset --mode refrag --retrieval multihop.parquet ... --top_k 3   # documents per hop

--mode rag: single-hop RAFT conversations (nanochat.rag.raft). --mode refrag: the guide's multi_hop retrieval
message, one hop per round of the table (nanochat.rag.multihop_data), the warm-up data of scripts.refrag_finetune.
Either way the shards are a DAG output (rule build_dataset), versioned like every other stage.
"""
from __future__ import annotations

import random
from pathlib import Path

import pandas as pd  # noqa: F401  (type hints)
from tqdm import tqdm

from nanochat.cli import ArgumentParser, output_dir
from nanochat.common import atomic_write_json, sha256_file, print0
from nanochat.data.queries import load_queries
from nanochat.rag.base_tasks import load_base_conversations
from nanochat.rag.conversation import CITE_STYLES, SYSTEM_PROMPT, ChunkStore
from nanochat.rag.metrics import ABSTAIN_ANSWER
from nanochat.rag.multihop_data import build_multihop_examples, encode_multihop
from nanochat.rag.raft import NEGATIVES, build_examples
from nanochat.rag.shards import encode_example, tokenizer_hash, write_shards

MODES = ("rag", "refrag")



def build_dataset(kb_chunks: pd.DataFrame, table: pd.DataFrame, query_files: dict, tokenizer, output_dir,
                  top_k: int = 5, p_gold: float = 0.8, max_seq_len: int = 512, max_doc_length: int | None = 300,
                  seed: int = 0, base_tasks: str | None = None, base_mix: float = 0.0,
                  examples_per_shard: int = 4096, provenance: dict | None = None, turns: int = 1,
                  p_counterfactual: float = 0.0, answer_style: str = "short", turn_scope: str = "entity",
                  negatives: str = "no_gold", cite: str = "after", p_gold_multihop: float | None = None) -> dict:
    """Build, tokenize and shard every split in query_files; write manifest.json last; return it.

    turns applies to the train split only: validation stays one question per conversation, the evaluation format.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # an interrupted rebuild must not look complete
    store = ChunkStore(kb_chunks)
    splits = {}
    for split, path in query_files.items():
        examples, stats = build_examples(load_queries(path), table, store, split, top_k, p_gold, max_doc_length, seed,
                                         turns if split == "train" else 1,
                                         p_counterfactual if split == "train" else 0.0, answer_style, turn_scope,
                                         negatives, cite, p_gold_multihop)
        encoded, too_long = [], 0
        for ex in tqdm(examples, desc=f"tokenize {split}", unit="ex"):
            enc = encode_example(tokenizer, ex["conversation"], ex["cited"], max_seq_len, max_doc_length)
            if enc is None:
                too_long += 1
            else:
                encoded.append(enc)
        if split == "train" and base_mix > 0:
            base = load_base_conversations(base_tasks, int(round(base_mix * len(encoded))), seed)
            base_enc = [e for e in (tokenizer.render_conversation(c, max_tokens=max_seq_len, on_overflow="report")
                                    for c in base) if not e[2]["cut_tokens"]]
            encoded += [(i, m) for i, m, _ in base_enc]
            random.Random(f"{seed}:mix").shuffle(encoded)
            stats["base_conversations"] = len(base_enc)
        for old in out.glob(f"{split}_*.npz"):
            old.unlink()
        stats.update(too_long=too_long, n_examples=len(encoded), n_tokens=int(sum(len(i) for i, _ in encoded)),
                     n_supervised_tokens=int(sum(sum(m) for _, m in encoded)),
                     shards=write_shards(encoded, out, split, examples_per_shard), queries_sha256=sha256_file(path))
        splits[split] = stats
    manifest = {"format": "nanochat-raft-v1", "splits": splits, "seed": seed, "top_k": top_k, "p_gold": p_gold,
                "max_seq_len": max_seq_len, "max_doc_length": max_doc_length, "turns": turns,
                "p_counterfactual": p_counterfactual, "negatives": negatives, "cite": cite, "max_doc_length_unit": "words",
                "abstain_answer": ABSTAIN_ANSWER, "system_prompt": SYSTEM_PROMPT, **(provenance or {})}
    if p_gold_multihop is not None:  # only when set: datasets built without it keep their manifest byte for byte
        manifest["p_gold_multihop"] = p_gold_multihop
    atomic_write_json(out / "manifest.json", manifest)
    return manifest

def build_multihop_dataset(kb_chunks: pd.DataFrame, table: pd.DataFrame, query_files: dict, tokenizer, output_dir,
                          top_k_per_hop: int = 3, p_gold: float = 0.8, max_seq_len: int = 512,
                          max_doc_length: int | None = 300, seed: int = 0, examples_per_shard: int = 4096,
                          provenance: dict | None = None, p_first_hop: float = 0.0, negatives: str = "no_gold") -> dict:
    """REFRAG's warm-up shards: multi_hop RAFT conversations (every gold document with p_gold, else hard
    negatives and the abstention), shortened to fit max_seq_len; examples that lose their answer when shortened
    are counted as too_long. Writes manifest.json (kind "multi_hop") last; returns it."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # an interrupted rebuild must not look complete
    store, splits = ChunkStore(kb_chunks), {}
    for split, path in query_files.items():
        examples, stats = build_multihop_examples(load_queries(path), table, store, split, top_k_per_hop, p_gold,
                                                  max_doc_length, seed, p_first_hop, negatives)
        encoded = [encode_multihop(tokenizer, e["conversation"], e["cited"], max_seq_len, max_doc_length,
                                   e["answers"] if e["with_gold"] else None) for e in examples]
        stats["too_long"] = sum(e is None for e in encoded)  # did not fit (or lost its answer) even when shortened
        encoded = [e for e in encoded if e is not None]
        for old in out.glob(f"{split}_*.npz"):
            old.unlink()
        stats.update(n_examples=len(encoded), shards=write_shards(encoded, out, split, examples_per_shard),
                     queries=str(path))
        splits[split] = stats
        print0(f"multi-hop {split}: {len(encoded)} examples ({stats['too_long']} too long for max_seq_len "
               f"{max_seq_len}, {stats['skipped']} without answer/gold)")
    manifest = {"format": "nanochat-raft-v1", "kind": "multi_hop", "splits": splits, "top_k_per_hop": top_k_per_hop,
                "p_gold": p_gold, "max_seq_len": max_seq_len, "max_doc_length": max_doc_length,
                "p_first_hop": p_first_hop, "negatives": negatives,
                "queries": {k: str(v) for k, v in query_files.items()}, "seed": seed, **(provenance or {})}
    atomic_write_json(out / "manifest.json", manifest)
    return manifest

def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="Build RAFT training examples from precomputed retrieval and shard them.")
    p.add_argument("--mode", default="rag", choices=list(MODES),
                   help="rag: single-hop RAFT conversations; refrag: multi_hop conversations, --top_k documents per hop")
    p.add_argument("--knowledge_base", required=True, help="KB directory (for chunk texts)")
    p.add_argument("--retrieval", required=True, help="retrieval table from python -m nanochat.retrieval.precompute")
    p.add_argument("--queries_train", required=True, help="training queries JSONL")
    p.add_argument("--queries_val", default=None, help="validation queries JSONL (optional)")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory")
    p.add_argument("--top_k", type=int, default=5, help="documents in each retrieval message (refrag: per hop)")
    p.add_argument("--max_hops", type=int, default=None, help="refrag: the table's retrieval rounds (recorded)")
    p.add_argument("--hop_strategy", default=None, help="refrag: how the table's hop queries were formed (recorded)")
    p.add_argument("--p_gold", type=float, default=0.8, help="probability the gold document is present")
    p.add_argument("--max_seq_len", type=int, default=512, help="tokens per example (documents shortened first)")
    p.add_argument("--max_doc_length", type=int, default=300, help="words per document before tokenizing; -1 = no limit")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--base_tasks", default="auto", help="auto | smoltalk | none | comma-separated JSONL chat files")
    p.add_argument("--base_mix", type=float, default=0.0, help="general conversations per RAG example in train (0 = none)")
    p.add_argument("--turns", type=int, default=1, help="questions per training conversation (same entity, same documents)")
    p.add_argument("--turn_scope", default="entity", choices=["entity", "shown"],
                   help="extra turns ask about the same entity, or about any shown document")
    p.add_argument("--p_counterfactual", type=float, default=0.0,
                   help="share of train examples whose answers are swapped (documents and targets) to force copying")
    p.add_argument("--answer_style", default="short", choices=["short", "quote"],
                   help="short: ' <answer> [n]'; quote: the supporting sentences verbatim, then 'Answer: <answer> [n]'")
    p.add_argument("--negatives", default="no_gold", choices=list(NEGATIVES),
                   help="examples without the answer: no_gold removes every gold document, answer_doc only the one "
                        "holding the answer (a two-hop question keeps its bridge document and abstains)")
    p.add_argument("--p_gold_multihop", type=float, default=None,
                   help="rag mode: p_gold of questions with several gold documents (default: --p_gold)")
    p.add_argument("--cite", default="after", choices=list(CITE_STYLES),
                   help="rag: citations after the answer (' Paris [2]') or before it (' [2] Paris')")
    p.add_argument("--p_first_hop", type=float, default=0.0,
                   help="refrag: share of questions shown only their first hop (answer from it, or abstain and hop on)")
    p.add_argument("--examples_per_shard", type=int, default=4096, help="examples per .npz shard")
    p.add_argument("--output", type=output_dir, required=True, help="dataset directory")
    return p

def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from nanochat.retrieval.precompute import load_precomputed
    from nanochat.retrieval.kb import KnowledgeBase
    from nanochat.tokenizer import Tokenizer
    kb = KnowledgeBase.load(args.knowledge_base)
    table = load_precomputed(args.retrieval)
    files = {"train": args.queries_train, **({"val": args.queries_val} if args.queries_val else {})}
    provenance = {"kb_id": kb.kb_id, "retrieval_table_sha256": sha256_file(args.retrieval),
                  "tokenizer_sha256": tokenizer_hash(args.tokenizer)}
    max_doc_length = None if args.max_doc_length < 0 else args.max_doc_length
    if args.mode == "refrag":
        provenance.update(retrieval=str(args.retrieval), max_hops=args.max_hops, hop_strategy=args.hop_strategy)
        build_multihop_dataset(kb.chunks, table, files, Tokenizer.from_directory(args.tokenizer), args.output,
                               args.top_k, args.p_gold, args.max_seq_len, max_doc_length, args.seed,
                               args.examples_per_shard, provenance, args.p_first_hop, args.negatives)
        return 0
    m = build_dataset(kb.chunks, table, files, Tokenizer.from_directory(args.tokenizer), args.output, args.top_k,
                      args.p_gold, args.max_seq_len, max_doc_length, args.seed, args.base_tasks, args.base_mix,
                      args.examples_per_shard, provenance, args.turns, args.p_counterfactual, args.answer_style,
                      args.turn_scope, args.negatives, args.cite, args.p_gold_multihop)
    for split, s in m["splits"].items():
        print0(f"{split}: {s['n_examples']} examples, {s['n_tokens']} tokens, p_gold actual {s['p_gold_actual']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
