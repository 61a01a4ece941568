"""Compressed dense indexes for large KBs: IVF-PQ / IVF-SQ8, trained on a sample, searched memory-mapped.

At 10M x 384 float32 a Flat index is 15 GB of RAM. Above `compress_threshold` chunks the dense index
stores product-quantized codes instead (IVF-PQ, `pq_m` bytes a vector: 48 -> 32x smaller than float32) or
8-bit scalar codes (IVF-SQ8, 4x), and is opened with FAISS's IO_FLAG_MMAP: the inverted lists stay in the
file and the OS pages in the lists a query probes, so opening a 1 GB index costs megabytes.

Quantized scores shuffle near ties, so by default each query's `refine` x top_k candidates are re-scored
exactly against the KB's own embeddings.npy (float32, already on disk) and re-sorted. The rows are read from a
memory map whose pages are released after each batch, so they never accumulate in the process's memory.
bench/large_index.py measures build time, q/s, memory and recall@10 against exact search.
"""
from __future__ import annotations

import math
import mmap

import numpy as np

COMPRESSED = ("ivf_pq", "ivf_sq8")
TRAIN_PER_LIST = 64  # training rows per inverted list (FAISS wants >= 39); PQ needs >= 256 x 39 rows as well


def default_nlist(n: int) -> int:
    """~4 sqrt(N) lists, with at least 39 rows to train each."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def sample_rows(embeddings: np.ndarray, size: int, seed: int, normalise) -> np.ndarray:
    """A seeded sample of rows (sorted, gathered block by block so a memmap's pages are dropped as we go)."""
    n, d = embeddings.shape
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, size), replace=False))
    out = np.empty((len(rows), d), dtype=np.float32)
    mapped = getattr(embeddings, "_mmap", None)
    block = 16_384
    for start in range(0, n, block):
        lo, hi = np.searchsorted(rows, [start, start + block])
        if hi > lo:
            out[lo:hi] = normalise(embeddings[rows[lo:hi]])
        if mapped is not None:
            mapped.madvise(mmap.MADV_DONTNEED)
    return out


def make_compressed(kind: str, d: int, n: int, nlist: int | None, pq_m: int, seed: int = 0):
    """An untrained IVF-PQ or IVF-SQ8 inner-product index and the training sample size it wants."""
    import faiss
    nlist = nlist or default_nlist(n)
    quantizer = faiss.IndexFlatIP(d)
    if kind == "ivf_pq":
        if d % pq_m:
            raise ValueError(f"pq_m={pq_m} must divide the embedding dimension {d} (e.g. 24, 48, 96 for 384)")
        index = faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.seed = 1234 + seed
    elif kind == "ivf_sq8":
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
    else:
        raise ValueError(f"compressed index kind must be one of {COMPRESSED}, got {kind!r}")
    index.cp.seed = 1234 + seed  # k-means of the coarse quantizer: seeded, so a rebuild gives the same bytes
    return index, train_rows(kind, nlist, n)


def train_rows(kind: str, nlist: int, n: int) -> int:
    """Rows of the training sample: TRAIN_PER_LIST per list (and 64 per PQ centroid), at most every row."""
    wanted = TRAIN_PER_LIST * nlist
    if kind == "ivf_pq":
        wanted = max(wanted, 256 * 64)
    return min(n, wanted)


def describe(index, kind: str) -> dict:
    """Parameters recorded in the KB manifest (dense settings): what the index holds and how it was trained."""
    import faiss
    ivf = faiss.extract_index_ivf(index)
    out = {"nlist": int(ivf.nlist), "train_rows": train_rows(kind, int(ivf.nlist), int(ivf.ntotal)),
           "code_size": int(ivf.code_size)}
    if kind == "ivf_pq":
        out.update(pq_m=int(index.pq.M), pq_nbits=int(index.pq.nbits))
    else:
        out.update(sq="QT_8bit")
    return out


def read_index(path, kind: str, mmap_mode: str = "auto"):
    """faiss.read_index, memory-mapped (IO_FLAG_MMAP) for compressed kinds under "auto", or when mmap_mode is "true"."""
    import faiss
    use = str(mmap_mode).lower() in ("true", "1") or (str(mmap_mode).lower() == "auto" and kind in COMPRESSED)
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY) if use else faiss.read_index(str(path))


def refine(embeddings: np.ndarray, queries: np.ndarray, cand: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of each query with its candidate rows (-1 = none), best top_k first; ties by row.

    Candidate rows are read through the memmap, which is told afterwards that the pages are not needed, so
    a long precompute does not grow the process by the touched part of embeddings.npy."""
    q, c = cand.shape
    idx = np.full((q, top_k), -1, dtype=np.int64)
    scores = np.full((q, top_k), -np.inf, dtype=np.float32)
    valid = cand >= 0
    rows = np.unique(cand[valid])
    if len(rows) == 0:
        return idx, scores
    vecs = np.asarray(embeddings[rows], dtype=np.float32)
    mapped = getattr(embeddings, "_mmap", None)
    if mapped is not None:
        mapped.madvise(mmap.MADV_DONTNEED)
    pos = np.searchsorted(rows, np.where(valid, cand, rows[0]))
    exact = np.einsum("qd,qcd->qc", queries.astype(np.float32), vecs[pos])
    exact[~valid] = -np.inf
    order = np.lexsort((np.where(valid, cand, np.iinfo(np.int64).max), -exact), axis=-1)[:, :top_k]
    k = order.shape[1]
    idx[:, :k] = np.take_along_axis(np.where(valid, cand, -1), order, axis=1)
    scores[:, :k] = np.take_along_axis(exact, order, axis=1)
    scores[idx < 0] = -np.inf
    return idx, scores
