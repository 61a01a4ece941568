"""Sharded KB builds: which documents a shard holds, per-shard BM25 tokens, and the gathers that join shards.

A knowledge base with `shards: N` is chunked, embedded and BM25-tokenized as N independent jobs (Snakemake's
scattergather; under SLURM, N cluster jobs), then gathered. Shards are contiguous, balanced ranges of the
validated documents, and every gather concatenates in shard order, so the gathered chunks, embeddings and
BM25 index are the ones a single job makes (same bytes, same kb_id; tests/test_shards.py). Shard items use
Snakemake's own names, "2-of-4" (1-based).

    python -m nanochat.retrieval.shards gather-chunks --inputs s1/chunks.parquet s2/chunks.parquet --output chunks.parquet
    python -m nanochat.retrieval.shards gather-embeddings --inputs s1/embeddings.npy s2/embeddings.npy --chunks chunks.parquet --output embeddings.npy
    python -m nanochat.retrieval.shards bm25-tokens --chunks s1/chunks.parquet --output s1/bm25_tokens.npz
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from nanochat.common import atomic_path, atomic_write_json, print0

SHARD_RE = re.compile(r"^(\d+)-of-(\d+)$")
COPY_BLOCK = 65_536  # embedding rows copied at a time by the gather


def parse_shard(item: str) -> tuple[int, int]:
    """"2-of-4" -> (2, 4); 1 <= i <= n."""
    m = SHARD_RE.match(str(item))
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ValueError(f"shard must look like I-of-N with 1 <= I <= N (Snakemake's scatteritem), got {item!r}")
    return int(m.group(1)), int(m.group(2))


def shard_slice(count: int, i: int, n: int) -> slice:
    """Shard i of n (1-based) of `count` items: contiguous and balanced (sizes differ by at most one)."""
    if not 1 <= i <= n:
        raise ValueError(f"shard {i} of {n}: need 1 <= i <= n")
    return slice((i - 1) * count // n, i * count // n)


def ids_sha256(ids) -> str:
    h = hashlib.sha256()
    for i in ids:
        h.update(str(i).encode("utf-8") + b"\n")
    return h.hexdigest()


# -----------------------------------------------------------------------------
# Gathers

def gather_chunks(paths: list, output) -> int:
    """Concatenate shard chunk files in order; their chunker settings must agree. Returns the chunk count."""
    import pandas as pd
    from nanochat.data.chunking import read_chunks
    frames = [read_chunks(p) for p in paths]
    chunkers = [f.attrs.get("chunker") for f in frames]
    if any(c != chunkers[0] for c in chunkers):
        raise ValueError(f"shards were chunked with different settings: {chunkers}; re-run the chunk stage")
    df = pd.concat(frames, ignore_index=True)
    if df["id"].duplicated().any():
        dup = df.loc[df["id"].duplicated(), "id"].iloc[0]
        raise ValueError(f"chunk id {dup!r} appears in two shards: shards must split the documents, not repeat them")
    df.attrs = {"chunker": chunkers[0]} if chunkers and chunkers[0] else {}
    with atomic_path(output) as tmp:
        df.to_parquet(tmp, index=False)
    return len(df)


def gather_embeddings(paths: list, chunks_path, output) -> dict:
    """Concatenate shard embedding matrices (block by block, never all in memory) and write the sidecar a single
    embed job would write for the gathered chunks. Every shard must come from the same embedder."""
    from nanochat.data.chunking import read_chunks
    infos = []
    for p in paths:
        side = Path(p).with_suffix(".json")
        if not side.is_file():
            raise FileNotFoundError(f"{side}: sidecar of {p} missing (python -m nanochat.retrieval.embeddings writes it)")
        infos.append(json.loads(side.read_text(encoding="utf-8")))
    per_shard = {"rows", "chunk_ids_sha256", "chunks_sha256"}
    base = [{k: v for k, v in i.items() if k not in per_shard} for i in infos]
    if any(b != base[0] for b in base):
        raise ValueError("shards were embedded by different embedders or precisions; re-run the embed stage")
    mats = [np.load(p, mmap_mode="r", allow_pickle=False) for p in paths]
    chunks = read_chunks(chunks_path)
    n, dim = sum(m.shape[0] for m in mats), mats[0].shape[1]
    if n != len(chunks):
        raise ValueError(f"shard embeddings hold {n} rows but {chunks_path} has {len(chunks)} chunks")
    with atomic_path(output) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        row = 0
        for m in mats:
            for start in range(0, m.shape[0], COPY_BLOCK):
                block = m[start:start + COPY_BLOCK]
                out[row:row + len(block)] = block
                row += len(block)
        out.flush()
        del out
    sidecar = {**base[0], "rows": n, "chunk_ids_sha256": ids_sha256(chunks["id"]),
               "chunks_sha256": hashlib.sha256(Path(chunks_path).read_bytes()).hexdigest()}
    atomic_write_json(Path(output).with_suffix(".json"), sidecar)
    return sidecar


# -----------------------------------------------------------------------------
# BM25 tokens per shard: the tokenizing (regex, stopwords, stemming) is the part of a BM25 build that grows with
# the corpus; the scoring matrix needs corpus-wide statistics and is built once at the gather.

def _tokenizer_settings(settings: dict | None) -> dict:
    from nanochat.retrieval.bm25 import DEFAULTS, WORD_RE
    s = {**DEFAULTS, **(settings or {})}
    return {"pattern": WORD_RE.pattern, "stemmer": s["stemmer"], "stopwords": s["stopwords"]}


def write_bm25_tokens(chunks, output, settings: dict | None = None) -> dict:
    """Tokenize a shard's passages as BM25Retriever.build would; store terms (sorted, newline-joined UTF-8),
    term ids per passage (flat int32 + offsets) and what they were made with."""
    from nanochat.retrieval.bm25 import Tokenizer
    from nanochat.retrieval.kb import passage_texts
    tok_settings = _tokenizer_settings(settings)
    tok = Tokenizer(tok_settings["stemmer"], tok_settings["stopwords"])
    tok_settings["stemmer"] = tok.stemmer_name  # None when PyStemmer is missing: the gather then refuses to mix
    docs = tok.batch(passage_texts(chunks))
    terms = sorted({t for d in docs for t in d})
    index = {t: i for i, t in enumerate(terms)}
    ids = np.fromiter((index[t] for d in docs for t in d), dtype=np.int32, count=sum(len(d) for d in docs))
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(d) for d in docs])
    meta = {"tokenizer": tok_settings, "chunk_ids_sha256": ids_sha256(chunks["id"]), "passages": len(docs)}
    with atomic_path(output) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, terms=np.frombuffer("\n".join(terms).encode("utf-8"), dtype=np.uint8), ids=ids,
                     offsets=offsets, meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8))
    return meta


def read_bm25_tokens(paths: list, chunks, settings: dict | None = None) -> tuple[list[list[int]], dict[str, int]]:
    """Shard token files -> (term ids per passage, vocabulary) over the whole corpus, ids in sorted term order:
    exactly bm25.sorted_vocab_corpus of tokenizing every passage in one process."""
    want = _tokenizer_settings(settings)
    shards, id_parts = [], []
    for p in paths:
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            raw = z["terms"].tobytes().decode("utf-8")
            shards.append((raw.split("\n") if raw else [], z["ids"], z["offsets"]))
        if meta["tokenizer"] != want:
            raise ValueError(f"{p}: tokenized with {meta['tokenizer']}, but this BM25 index uses {want}; "
                             "re-run the shard's bm25 tokens")
        id_parts.append(meta["chunk_ids_sha256"])
    lengths = [len(s[2]) - 1 for s in shards]
    if sum(lengths) != len(chunks):
        raise ValueError(f"BM25 token shards hold {sum(lengths)} passages, the KB {len(chunks)} chunks")
    start = 0
    for p, n, sha in zip(paths, lengths, id_parts):
        if ids_sha256(chunks["id"].iloc[start:start + n]) != sha:
            raise ValueError(f"{p}: its chunk ids differ from rows {start}..{start + n - 1} of the KB's chunks "
                             "(shards gathered out of order, or from other chunks)")
        start += n
    vocab_terms = sorted(set().union(*(set(s[0]) for s in shards)))
    vocab = {t: i for i, t in enumerate(vocab_terms)}
    corpus: list[list[int]] = []
    for terms, ids, offsets in shards:
        remap = np.array([vocab[t] for t in terms], dtype=np.int64)
        glob = remap[ids] if len(ids) else ids.astype(np.int64)
        corpus += [glob[offsets[k]:offsets[k + 1]].tolist() for k in range(len(offsets) - 1)]
    return corpus, vocab


def main(argv=None) -> int:
    from nanochat.cli import ArgumentParser, output_file
    from nanochat.data.chunking import read_chunks
    parser = ArgumentParser(description="Gather the shards of a sharded KB build, or tokenize one shard for BM25.")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gather-chunks", help="concatenate shard chunks.parquet files in order")
    g.add_argument("--inputs", nargs="+", required=True)
    g.add_argument("--output", type=output_file, required=True)
    e = sub.add_parser("gather-embeddings", help="concatenate shard embeddings.npy files in order (+ sidecar)")
    e.add_argument("--inputs", nargs="+", required=True)
    e.add_argument("--chunks", required=True, help="the gathered chunks.parquet the rows belong to")
    e.add_argument("--output", type=output_file, required=True)
    t = sub.add_parser("bm25-tokens", help="tokenize one shard's passages for the BM25 index")
    t.add_argument("--chunks", required=True)
    t.add_argument("--output", type=output_file, required=True)
    args = parser.parse_args(argv)
    if args.command == "gather-chunks":
        n = gather_chunks(args.inputs, args.output)
        print0(f"gathered {n} chunks from {len(args.inputs)} shard(s) into {args.output}")
    elif args.command == "gather-embeddings":
        info = gather_embeddings(args.inputs, args.chunks, args.output)
        print0(f"gathered {info['rows']} x {info['dimension']} embeddings from {len(args.inputs)} shard(s) into {args.output}")
    else:
        meta = write_bm25_tokens(read_chunks(args.chunks), args.output)
        print0(f"tokenized {meta['passages']} passages into {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
