"""Tokenized training examples on disk: (ids, loss mask) pairs in .npz shards, no pickle.

Shards: `{split}_{i:05d}.npz` with ids (int32, concatenated), mask (uint8), offsets (int64, n+1);
the dataset's `manifest.json` is written last and lists them, so a half-written dataset never looks complete.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nanochat.common import atomic_path, sha256_file, sha256_text
from nanochat.rag.conversation import MIN_DOC_WORDS, truncate_words


def encode_example(tokenizer, conversation: dict, cited: list[int], max_seq_len: int, max_doc_length: int | None):
    """(ids, mask) fitting max_seq_len with every cited document intact, or None.

    Retries with halved document word budgets when the tokenizer had to cut a cited document; a multi-turn
    conversation first gives up its extra turns, last first.
    """
    msgs = conversation["messages"]
    n_assistant = sum(m["role"] == "assistant" for m in msgs)
    while n_assistant > 1:
        ids, mask, info = tokenizer.render_conversation(conversation, max_tokens=max_seq_len, on_overflow="report")
        if not info["cut_tokens"] and not info["dropped_docs"] and not info["shortened_docs"]:
            return ids, mask  # extra turns are only worth keeping with every document whole
        msgs = msgs[:-2]  # drop the last user/assistant pair
        conversation, n_assistant = {**conversation, "messages": msgs}, n_assistant - 1
    lengths = [len(d["content"].split()) for m in conversation["messages"] if m["role"] == "retrieval"
               for d in m["documents"]]
    words = max_doc_length or max(lengths, default=None)
    conv = conversation
    while True:
        ids, mask, info = tokenizer.render_conversation(conv, max_tokens=max_seq_len, on_overflow="report")
        cut = set(info["dropped_docs"]) | {int(k) for k in info["shortened_docs"]}
        if not info["cut_tokens"] and not (cut & set(cited)):
            return ids, mask
        if info["cut_tokens"] or words is None or words <= MIN_DOC_WORDS:
            return None
        words = max(MIN_DOC_WORDS, words // 2)
        conv = {"messages": [m if m["role"] != "retrieval" else
                             {**m, "documents": [{**d, "content": truncate_words(d["content"], words)} for d in m["documents"]]}
                             for m in conversation["messages"]]}

def write_shards(encoded: list[tuple[list[int], list[int]]], output_dir, split: str,
                 examples_per_shard: int = 4096) -> list[str]:
    """Write `{split}_{i:05d}.npz` shards atomically; returns their file names."""
    output_dir = Path(output_dir)
    names = []
    for s, start in enumerate(range(0, max(len(encoded), 1), examples_per_shard)):
        part = encoded[start:start + examples_per_shard]
        lengths = np.array([len(ids) for ids, _ in part], np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = np.fromiter((t for x, _ in part for t in x), np.int32, count=int(offsets[-1]))
        mask = np.fromiter((t for _, m in part for t in m), np.uint8, count=int(offsets[-1]))
        name = f"{split}_{s:05d}.npz"
        with atomic_path(output_dir / name) as tmp, open(tmp, "wb") as f:
            np.savez(f, ids=ids, mask=mask, offsets=offsets)
        names.append(name)
    return names

class ShardDataset:
    """Examples of one split as (ids int32, mask uint8) numpy views; len() and [i]."""

    def __init__(self, paths: list[Path]):
        ids, masks, offsets, base = [], [], [np.zeros(1, np.int64)], 0
        for p in paths:
            with np.load(p, allow_pickle=False) as z:
                ids.append(z["ids"])
                masks.append(z["mask"])
                offsets.append(z["offsets"][1:] + base)
                base += int(z["offsets"][-1])
        self.ids = np.concatenate(ids) if ids else np.zeros(0, np.int32)
        self.mask = np.concatenate(masks) if masks else np.zeros(0, np.uint8)
        self.offsets = np.concatenate(offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(f"example {i} out of range for {len(self)} examples")
        i %= len(self)
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.ids[a:b], self.mask[a:b]

def load_dataset_shards(dataset_dir, split: str) -> ShardDataset:
    """The split's examples, from the shards listed in manifest.json (stale files are ignored)."""
    d = Path(dataset_dir)
    mp = d / "manifest.json"
    if not mp.is_file():
        raise FileNotFoundError(f"{mp} not found: the dataset is missing or incomplete (run python -m nanochat.rag.raft)")
    manifest = json.loads(mp.read_text(encoding="utf-8"))
    if split not in manifest["splits"]:
        raise KeyError(f"{d}: no split {split!r}; available: {sorted(manifest['splits'])}")
    return ShardDataset([d / n for n in manifest["splits"][split]["shards"]])

def rank_slice(n: int, rank: int, world_size: int) -> range:
    """Indices for one DDP rank: strided, every rank the same count (the n % world_size tail is dropped)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} outside world_size={world_size}")
    return range(rank, n - n % world_size, world_size)

def tokenizer_hash(tokenizer_dir) -> str:
    d = Path(tokenizer_dir)
    return sha256_text("".join(f"{p.relative_to(d)}:{sha256_file(p)}\n" for p in sorted(d.rglob("*")) if p.is_file()))
