"""Split documents into sentence-aware, token-budgeted chunks with overlap.

Token counting uses a deliberately simple, deterministic tokenizer: a token is a run of word
characters (`\\w+`) or a single other non-space character (punctuation). It needs no model,
gives the same answer on every machine, and is close enough to subword counts (~1.3 BPE
tokens per word) to size chunks for the model's context.

Chunks are spans of the original text (never rewritten), so every character of a document
that belongs to some token appears in at least one chunk. A chunk ends at the last sentence
boundary that fits the budget, if that keeps it at least half full; otherwise (a very long
sentence) it is cut at word level. The next
chunk starts up to `overlap` tokens back, at a sentence start when one lies in that window.

    python -m nanochat.data.chunking --input valid.jsonl --output chunks.parquet --chunk_tokens 256 --overlap 32
"""
from __future__ import annotations

import bisect
import json
import re
import sys
from pathlib import Path

from nanochat.common import atomic_path, print0

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
SENTENCE_END = {".", "!", "?"}
TOKENIZER_ID = "regex-word-punct-v1"
CHUNK_COLUMNS = ["id", "doc_id", "chunk_index", "title", "content", "source", "metadata", "n_tokens", "char_start", "char_end"]


def count_tokens(text: str) -> int:
    return sum(1 for _ in TOKEN_RE.finditer(text))


def _sentence_starts(text: str, spans: list[tuple[int, int]]) -> list[int]:
    """Token indices that begin a sentence: after . ! ? followed by whitespace, or after a line break."""
    starts = [0]
    for i in range(1, len(spans)):
        gap = text[spans[i - 1][1]:spans[i][0]]
        prev = text[spans[i - 1][0]:spans[i - 1][1]]
        if "\n" in gap or (prev in SENTENCE_END and gap):
            starts.append(i)
    return starts


def split_sentences(text: str) -> list[str]:
    """The text's sentences, cut where the chunker may cut (`_sentence_starts`), verbatim."""
    spans = [m.span() for m in TOKEN_RE.finditer(text)]
    starts = _sentence_starts(text, spans) + [len(spans)] if spans else []
    return [text[spans[a][0]:spans[b - 1][1]] for a, b in zip(starts, starts[1:])]


def chunk_spans(text: str, chunk_tokens: int = 256, overlap: int = 32) -> list[tuple[int, int]]:
    """Character spans (start, end) of the chunks of one text; see the module docstring."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if not 0 <= overlap < chunk_tokens:
        raise ValueError(f"overlap must be in [0, chunk_tokens={chunk_tokens}), got {overlap}")
    spans = [m.span() for m in TOKEN_RE.finditer(text)]
    n = len(spans)
    if n <= chunk_tokens:  # short document: one chunk, the whole text minus surrounding whitespace
        return [(spans[0][0], spans[-1][1])] if spans else [(0, len(text))]
    bounds = _sentence_starts(text, spans) + [n]  # sorted token indices where a chunk may end/start
    out, a = [], 0
    while True:
        limit = a + chunk_tokens
        if limit >= n:
            b = n
        else:
            j = bisect.bisect_right(bounds, limit) - 1   # last sentence boundary <= limit
            # ending there must still fill half the budget; otherwise cut the long sentence by words
            b = bounds[j] if bounds[j] >= a + max(1, chunk_tokens // 2) else limit
        out.append((spans[a][0], spans[b - 1][1]))
        if b == n:
            return out
        lo = max(b - overlap, a + 1)
        j = bisect.bisect_left(bounds, lo)               # earliest sentence start inside the overlap window
        a = bounds[j] if bounds[j] < b else (lo if overlap > 0 else b)


def chunk_documents(docs: list[dict], chunk_tokens: int = 256, overlap: int = 32, show_progress: bool = False) -> list[dict]:
    """Documents -> chunk rows with stable ids `<doc_id>#<k>` and the parent's title/source/metadata."""
    from tqdm import tqdm
    rows = []
    for doc in tqdm(docs, desc="chunking", unit="doc", disable=not show_progress):
        text = doc["content"]
        for k, (s, e) in enumerate(chunk_spans(text, chunk_tokens, overlap)):
            piece = text[s:e]
            rows.append({
                "id": f"{doc['id']}#{k}", "doc_id": doc["id"], "chunk_index": k,
                "title": doc.get("title") or doc["id"], "content": piece,
                "source": doc.get("source"), "metadata": dict(doc.get("metadata") or {}),
                "n_tokens": count_tokens(piece), "char_start": s, "char_end": e,
            })
    return rows


def chunker_settings(chunk_tokens: int, overlap: int) -> dict:
    """The settings that made a chunks file: stored with it, and part of a KB's kb_id (never a path)."""
    return {"chunk_tokens": int(chunk_tokens), "overlap": int(overlap), "tokenizer": TOKENIZER_ID}


def chunks_to_frame(rows: list[dict], chunker: dict | None = None):
    """Chunk rows -> DataFrame as stored in chunks.parquet (metadata as a JSON string: Parquet needs one schema).

    chunker (see chunker_settings) rides in `df.attrs`, which pandas keeps in the Parquet file's metadata,
    so a KB built later from the file alone knows how its chunks were cut.
    """
    import pandas as pd
    df = pd.DataFrame(rows, columns=CHUNK_COLUMNS)
    if chunker:
        df.attrs["chunker"] = dict(chunker)
    df["metadata"] = [json.dumps(m or {}, ensure_ascii=False, sort_keys=True) for m in df["metadata"]]
    df["source"] = df["source"].astype(object).where(df["source"].notna(), None)
    return df


def write_chunks(rows: list[dict], path: str | Path, chunker: dict | None = None) -> None:
    df = chunks_to_frame(rows, chunker)
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def read_chunks(path: str | Path):
    """chunks.parquet -> DataFrame; checks the columns so a wrong file fails here, not in a retriever."""
    import pandas as pd
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"chunks file not found: {path}")
    df = pd.read_parquet(path)
    missing = [c for c in ("id", "doc_id", "title", "content") if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a chunks file, missing column(s) {missing}; make one with python -m nanochat.data.chunking")
    return df


def shard_records(path, shard: str) -> list[dict]:
    """The documents of one shard of a (validated) JSONL file, parsing only that shard's lines."""
    from nanochat.retrieval.shards import parse_shard, shard_slice
    i, n = parse_shard(shard)
    with open(path, encoding="utf-8") as f:
        count = sum(1 for line in f if line.strip())
    part = shard_slice(count, i, n)
    records, k = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            if part.start <= k < part.stop:
                records.append(json.loads(line))
            k += 1
    return records


def main(argv=None) -> int:
    from nanochat.cli import ArgumentParser, output_file
    from nanochat.data.documents import load_documents
    parser = ArgumentParser(description="Chunk validated documents into chunks.parquet.")
    parser.add_argument("--input", required=True, help="valid documents JSONL (output of python -m nanochat.data.documents)")
    parser.add_argument("--output", type=output_file, required=True, help="chunks.parquet to write")
    parser.add_argument("--chunk_tokens", type=int, default=256, help="max tokens per chunk (regex word/punct tokens)")
    parser.add_argument("--overlap", type=int, default=32, help="tokens shared by consecutive chunks of a document")
    parser.add_argument("--shard", default=None, help="I-of-N: chunk only the I-th of N contiguous document ranges "
                                                      "(a sharded KB build; nanochat.retrieval.shards)")
    args = parser.parse_args(argv)
    docs = load_documents(shard_records(args.input, args.shard) if args.shard else args.input, mode="strict")
    rows = chunk_documents(docs, args.chunk_tokens, args.overlap, show_progress=True)
    write_chunks(rows, args.output, chunker_settings(args.chunk_tokens, args.overlap))
    print0(f"wrote {len(rows)} chunks from {len(docs)} documents to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
