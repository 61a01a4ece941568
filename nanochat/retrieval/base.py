"""The contract every retriever keeps: build files into a KB directory, load them, search in batches.

Retrievers return row indices into the KB's chunk table plus scores; `RetrievalManager`
turns those into `Document` objects. Keeping retrievers index-based lets precompute,
hybrid fusion and evaluation work on arrays without building Python objects per hit.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


@dataclass
class Document:
    """One retrieved passage (a chunk of a user document), as the guide's `doc.to_dict()` expects."""
    id: str
    title: str
    content: str
    score: float = 0.0
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Retriever:
    """Base class. Subclasses set `name` and implement `build`, `load` and `search_batch`.

    build(kb_dir, chunks, settings, embeddings) -> dict
        Write this retriever's index files under `kb_dir / name` (atomically) and return the
        settings actually used (recorded in manifest.json). `chunks` is the KB's chunk table
        (pandas DataFrame with columns id, doc_id, title, content, source, ...), `embeddings`
        the KB's (N, dim) float32 matrix or None when the KB has none.
    load(kb) -> Retriever
        `kb` is a loaded `KnowledgeBase` (chunks, manifest, path, embeddings on demand).
    search_batch(queries, top_k) -> (indices (Q, k) int64, scores (Q, k) float32)
        Row indices into kb.chunks, best first; rows padded with -1 / -inf when fewer than k hits.
    """

    name: ClassVar[str] = ""

    @classmethod
    def build(cls, kb_dir: Path, chunks, settings: dict, embeddings: np.ndarray | None) -> dict:
        raise NotImplementedError

    @classmethod
    def load(cls, kb) -> "Retriever":
        raise NotImplementedError

    def search_batch(self, queries: list[str], top_k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def search(self, query: str, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        idx, scores = self.search_batch([query], top_k)
        return idx[0], scores[0]
