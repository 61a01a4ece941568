"""TF-IDF retriever with numpy/scipy only: the guide's "no dependencies" option.

Weights: sublinear tf (1 + log tf) times smoothed idf (log((1 + N) / (1 + df)) + 1), rows
L2-normalised, so a query's dot product with a row is its cosine similarity. Stored as
`simple/tfidf.npz` (CSR arrays + idf, read with allow_pickle=False) and `simple/vocab.json`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from nanochat.retrieval.base import Retriever

WORD_RE = re.compile(r"\w\w+")  # words of 2+ characters, like scikit-learn's default


def tokenize(text: str) -> list[str]:
    return WORD_RE.findall(text.lower())


def _tf_matrix(texts: list[str], vocab: dict[str, int], grow: bool, show_progress: bool = False) -> sp.csr_matrix:
    """Raw term counts (len(texts), len(vocab)); unknown words are added when `grow`, else skipped."""
    from tqdm import tqdm
    indptr, indices, data = [0], [], []
    for text in tqdm(texts, desc="tf-idf index", unit="chunk", disable=not show_progress):
        counts: dict[int, int] = {}
        for w in tokenize(text):
            j = vocab.get(w)
            if j is None:
                if not grow:
                    continue
                j = vocab[w] = len(vocab)
            counts[j] = counts.get(j, 0) + 1
        indices.extend(counts)
        data.extend(counts.values())
        indptr.append(len(indices))
    return sp.csr_matrix((np.asarray(data, np.float32), np.asarray(indices, np.int64), np.asarray(indptr, np.int64)),
                         shape=(len(texts), len(vocab)))


def _weight(tf: sp.csr_matrix, idf: np.ndarray) -> sp.csr_matrix:
    """sublinear tf * idf, then L2-normalise each row (empty rows stay zero)."""
    w = tf.copy().astype(np.float32)
    w.data = (1.0 + np.log(w.data)) * idf[w.indices]
    norms = np.sqrt(np.asarray(w.multiply(w).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / norms) @ w, dtype=np.float32)


def top_k_dense(scores: np.ndarray, top_k: int, min_score: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Best-first top-k per row of a (Q, N) score matrix; hits with score <= min_score become -1 / -inf."""
    q, n = scores.shape
    k = min(top_k, n)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (q, 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    idx = np.full((q, top_k), -1, np.int64)
    out = np.full((q, top_k), -np.inf, np.float32)
    idx[:, :k] = np.take_along_axis(part, order, axis=1)
    out[:, :k] = np.take_along_axis(part_scores, order, axis=1)
    miss = out <= min_score
    idx[miss], out[miss] = -1, -np.inf
    return idx, out


class SimpleRetriever(Retriever):
    name = "simple"

    def __init__(self, matrix: sp.csr_matrix, idf: np.ndarray, vocab: dict[str, int]):
        self.matrix, self.idf, self.vocab = matrix, idf, vocab  # matrix: (N, V) normalised tf-idf

    @classmethod
    def build(cls, kb_dir, chunks, settings, embeddings=None) -> dict:
        from nanochat.retrieval.kb import atomic_dir, passage_texts
        texts = passage_texts(chunks)
        vocab: dict[str, int] = {}
        tf = _tf_matrix(texts, vocab, grow=True, show_progress=len(texts) >= 1000)
        df = np.bincount(tf.indices, minlength=len(vocab)).astype(np.float32)
        idf = (np.log((1.0 + len(texts)) / (1.0 + df)) + 1.0).astype(np.float32)
        m = _weight(tf, idf)
        terms = [None] * len(vocab)
        for w, j in vocab.items():
            terms[j] = w
        with atomic_dir(Path(kb_dir) / cls.name) as d:
            np.savez(d / "tfidf.npz", data=m.data, indices=m.indices, indptr=m.indptr,
                     shape=np.asarray(m.shape, np.int64), idf=idf)
            (d / "vocab.json").write_text(json.dumps(terms, ensure_ascii=False), encoding="utf-8")
        return {"weighting": "sublinear-tf * smooth-idf, l2", "tokenizer": WORD_RE.pattern, "vocab_size": len(vocab)}

    @classmethod
    def load(cls, kb) -> "SimpleRetriever":
        d = Path(kb.path) / cls.name
        with np.load(d / "tfidf.npz", allow_pickle=False) as z:
            m = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
            idf = z["idf"]
        terms = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
        return cls(m, idf, {w: j for j, w in enumerate(terms)})

    def search_batch(self, queries: list[str], top_k: int, batch_size: int = 256):
        idx_parts, score_parts = [], []
        for i in range(0, len(queries), batch_size):
            q = _weight(_tf_matrix(queries[i:i + batch_size], self.vocab, grow=False), self.idf)
            scores = (q @ self.matrix.T).toarray()  # (Qb, N) cosine similarities
            a, b = top_k_dense(scores, top_k)
            idx_parts.append(a)
            score_parts.append(b)
        if not idx_parts:
            return np.zeros((0, top_k), np.int64), np.zeros((0, top_k), np.float32)
        return np.concatenate(idx_parts), np.concatenate(score_parts)
