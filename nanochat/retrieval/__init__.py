"""Retrieval over a user's knowledge base: the guide's `RetrievalManager` and the KB builder.

    from nanochat.retrieval import RetrievalManager
    manager = RetrievalManager(retriever_type="bm25", knowledge_base_path="data/my_kb")
    for doc in manager.retrieve("return policy", top_k=3):
        print(f"Score: {doc.score:.3f} - {doc.title}")
"""
from __future__ import annotations

import numpy as np

from nanochat.retrieval.base import Document, Retriever
from nanochat.retrieval.kb import (KnowledgeBase, KnowledgeBaseError, build_knowledge_base,
                                   build_knowledge_base_from_chunks)
from nanochat.retrieval.registry import RETRIEVERS, get_retriever_class

__all__ = ["RetrievalManager", "Document", "Retriever", "KnowledgeBase", "KnowledgeBaseError",
           "build_knowledge_base", "build_knowledge_base_from_chunks", "RETRIEVERS", "get_retriever_class"]


class RetrievalManager:
    """Loads (and verifies) a KB once, then answers queries with the chosen index.

    `settings` are passed to the retriever's `load` (e.g. `backend="numpy"` for bm25).
    """

    def __init__(self, retriever_type: str = "simple", knowledge_base_path=None, verify: bool = True, **settings):
        if knowledge_base_path is None:
            raise ValueError("knowledge_base_path is required (a directory built by python -m nanochat.retrieval)")
        self.retriever_type = retriever_type
        self.kb = KnowledgeBase.load(knowledge_base_path, verify=verify)
        self.retriever = self.kb.retriever(retriever_type, **settings)

    def search_batch(self, queries: list[str], top_k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Raw (indices (Q, k) int64 into kb.chunks, scores (Q, k) float32); -1 / -inf pad missing hits."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        return self.retriever.search_batch(list(queries), top_k)

    def retrieve_batch(self, queries: list[str], top_k: int = 5) -> list[list[Document]]:
        idx, scores = self.search_batch(queries, top_k)
        return [[self.kb.document(i, s, rank=r + 1, retriever=self.retriever_type)
                 for r, (i, s) in enumerate(zip(row_i, row_s)) if i >= 0]
                for row_i, row_s in zip(idx, scores)]

    def retrieve(self, query: str, top_k: int = 5) -> list[Document]:
        return self.retrieve_batch([query], top_k)[0]
