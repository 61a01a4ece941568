"""Hybrid retrieval: dense + BM25 candidate lists fused into one ranking.

Two fusions:
- "interpolate" (default): min-max normalise each list's scores to [0, 1] over its candidates,
  then dense_weight * dense + (1 - dense_weight) * bm25; a document missing from a list gets 0 there.
- "rrf": reciprocal rank fusion, sum over lists of 1 / (rrf_k + rank), rank starting at 1.
Default chosen by measurement on SciFact train only (python -m bench.retrieval_quality): nDCG@10
interpolate w=0.45 0.7320 vs RRF 0.7179 (BM25 0.6964, dense 0.6602); the weight curve is flat
from 0.35 to 0.55 (0.7301..0.7320) and peaks at 0.45. Both lists are fetched deeper than top_k
(max(depth, depth_factor * top_k)) so a document ranked low by one retriever can still surface.

The build writes only `<kb>/hybrid/settings.json`; the dense and bm25 indexes are reused.

Per-KB tuning (`tune_fusion`, or `python -m nanochat.retrieval ... --type hybrid --tune_fusion q_val.jsonl`):
the dense weight (or rrf_k) that maximises nDCG@10 on val questions, chosen from one pair of candidate lists
fused many ways; the value and the whole curve go into hybrid/settings.json ("tuned"), hence the manifest
and the kb_id. A fine-tuned encoder shifts the best weight, which is why it is tuned per KB.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nanochat.common import atomic_write_json
from nanochat.retrieval.base import Retriever

FUSIONS = ("interpolate", "rrf")


def _valid(indices: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = indices >= 0
    return indices[keep], scores[keep]


def rrf_scores(ranked_lists: list[np.ndarray], k: int = 60, weights=None) -> dict[int, float]:
    """Reciprocal rank fusion of best-first index lists (-1 = padding) -> {index: fused score}."""
    weights = [1.0] * len(ranked_lists) if weights is None else weights
    fused: dict[int, float] = {}
    for w, idx in zip(weights, ranked_lists):
        idx = idx[idx >= 0]
        for rank, i in enumerate(idx.tolist(), start=1):
            fused[i] = fused.get(i, 0.0) + w / (k + rank)
    return fused


def minmax(scores: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; a constant list maps to all ones (every candidate equally good)."""
    if scores.size == 0:
        return scores.astype(np.float64)
    lo, hi = float(scores.min()), float(scores.max())
    if hi - lo <= 1e-12:
        return np.ones_like(scores, dtype=np.float64)
    return (scores.astype(np.float64) - lo) / (hi - lo)


def interpolate_scores(lists: list[tuple[np.ndarray, np.ndarray]], weights: list[float]) -> dict[int, float]:
    """sum_i w_i * minmax(scores_i)[doc] over lists of (indices, scores); absent = 0."""
    fused: dict[int, float] = {}
    for w, (idx, sc) in zip(weights, lists):
        idx, sc = _valid(idx, sc)
        for i, s in zip(idx.tolist(), minmax(sc).tolist()):
            fused[i] = fused.get(i, 0.0) + w * s
    return fused


def top_k_of(fused: dict[int, float], top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best-first (indices, scores) of length top_k, padded with -1 / -inf; ties broken by lower index."""
    idx = np.full(top_k, -1, dtype=np.int64)
    scores = np.full(top_k, -np.inf, dtype=np.float32)
    best = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
    for r, (i, s) in enumerate(best):
        idx[r], scores[r] = i, s
    return idx, scores


def fuse(dense: tuple[np.ndarray, np.ndarray], sparse: tuple[np.ndarray, np.ndarray], top_k: int,
         fusion: str = "interpolate", dense_weight: float = 0.45, rrf_k: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Fuse batched (indices (Q, n), scores (Q, n)) from dense and BM25 into (Q, top_k)."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if not 0.0 <= dense_weight <= 1.0:
        raise ValueError(f"dense_weight must be in [0, 1], got {dense_weight}")
    q = dense[0].shape[0]
    assert sparse[0].shape[0] == q, f"dense has {q} query rows, bm25 has {sparse[0].shape[0]}"
    idx = np.full((q, top_k), -1, dtype=np.int64)
    scores = np.full((q, top_k), -np.inf, dtype=np.float32)
    for r in range(q):
        d, s = (dense[0][r], dense[1][r]), (sparse[0][r], sparse[1][r])
        if fusion == "rrf":
            fused = rrf_scores([d[0], s[0]], k=rrf_k, weights=[2 * dense_weight, 2 * (1 - dense_weight)])
        else:
            fused = interpolate_scores([d, s], [dense_weight, 1.0 - dense_weight])
        idx[r], scores[r] = top_k_of(fused, top_k)
    return idx, scores


class HybridRetriever(Retriever):
    name = "hybrid"
    DEFAULTS = {
        "fusion": "interpolate",  # interpolate | rrf
        "dense_weight": 0.45,     # interpolate: weight of the dense score; rrf: 0.5 = plain (unweighted) RRF
        "rrf_k": 60,
        "depth": 100,             # candidates fetched from each retriever: max(depth, depth_factor * top_k)
        "depth_factor": 4,
        "tuned": None,            # set by tune_fusion: split, metric, questions and the score of every value tried
    }

    def __init__(self, dense, sparse, settings: dict):
        self.dense, self.sparse, self.settings = dense, sparse, settings

    @classmethod
    def _check(cls, s: dict) -> dict:
        unknown = set(s) - set(cls.DEFAULTS)
        if unknown:
            raise ValueError(f"unknown hybrid setting(s): {sorted(unknown)}; known: {sorted(cls.DEFAULTS)}")
        s = {**cls.DEFAULTS, **s}
        if s["fusion"] not in FUSIONS:
            raise ValueError(f"hybrid fusion must be one of {FUSIONS}, got {s['fusion']!r}")
        if not 0.0 <= float(s["dense_weight"]) <= 1.0:
            raise ValueError(f"hybrid dense_weight must be in [0, 1], got {s['dense_weight']}")
        return s

    @classmethod
    def build(cls, kb_dir, chunks, settings: dict, embeddings: np.ndarray | None) -> dict:
        s = cls._check(dict(settings or {}))
        for dep in ("dense", "bm25"):
            if not (Path(kb_dir) / dep).is_dir():
                raise FileNotFoundError(f"hybrid retrieval reuses the {dep} index, but {Path(kb_dir) / dep} does not exist; "
                                        "build the KB with --type hybrid (which builds dense and bm25 first)")
        atomic_write_json(Path(kb_dir) / cls.name / "settings.json", s)
        return s

    @classmethod
    def load(cls, kb, **overrides) -> "HybridRetriever":
        """Overrides (fusion, dense_weight, rrf_k, depth, depth_factor) change search without a rebuild; the dense
        index's search settings (nprobe, ef_search, refine, ...) are passed on to it."""
        from nanochat.retrieval.registry import get_retriever_class
        path = Path(kb.path) / cls.name / "settings.json"
        if not path.is_file():
            raise FileNotFoundError(f"hybrid settings not found: {path}; build the KB with --type hybrid")
        dense_cls = get_retriever_class("dense")
        dense_overrides = {k: overrides.pop(k) for k in list(overrides) if k in dense_cls.SEARCH_SETTINGS}
        s = cls._check({**json.loads(path.read_text()), **overrides})
        dense = dense_cls.load(kb, **dense_overrides)
        sparse = get_retriever_class("bm25").load(kb)
        return cls(dense, sparse, s)

    def search_batch(self, queries: list[str], top_k: int) -> tuple[np.ndarray, np.ndarray]:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        s = self.settings
        depth = max(int(s["depth"]), int(s["depth_factor"]) * top_k)
        queries = list(queries)
        d = self.dense.search_batch(queries, depth)
        b = self.sparse.search_batch(queries, depth)
        return fuse(d, b, top_k, s["fusion"], float(s["dense_weight"]), int(s["rrf_k"]))


WEIGHT_GRID = tuple(round(0.05 * i, 2) for i in range(21))
RRF_K_GRID = (5, 10, 20, 30, 60, 100, 200)


def tune_fusion(kb, rows: list[dict], metric: str = "ndcg@10", fusion: str | None = None, grid=None,
                top_k: int = 100, split: str = "val") -> dict:
    """Hybrid settings {fusion, dense_weight | rrf_k, tuned} maximising `metric` over rows (questions with doc_ids).

    Candidate lists are fetched once; each value of the grid only re-fuses them. The value chosen is the one whose
    score averaged with its grid neighbours' is best: a val set of a hundred questions gives a jagged curve, and a
    lone peak is more often noise than a better weight. Ties go to the value nearest the default, so a flat curve
    keeps the measured default.
    """
    from nanochat.retrieval.pairs import qrels_of, ranking_score
    from nanochat.common import sha256_text
    rows = [r for r in rows if r.get("doc_ids")]
    if not rows:
        raise ValueError("tune_fusion needs questions with doc_ids (gold documents)")
    hyb = kb.retriever("hybrid")
    s = hyb.settings
    fusion = fusion or s["fusion"]
    key, default = ("dense_weight", HybridRetriever.DEFAULTS["dense_weight"]) if fusion == "interpolate" else \
        ("rrf_k", HybridRetriever.DEFAULTS["rrf_k"])
    grid = tuple(grid or (WEIGHT_GRID if fusion == "interpolate" else RRF_K_GRID))
    questions, qids = [r["question"] for r in rows], [str(r["id"]) for r in rows]
    depth = max(int(s["depth"]), int(s["depth_factor"]) * top_k)
    d = hyb.dense.search_batch(questions, depth)
    b = hyb.sparse.search_batch(questions, depth)
    doc_ids, qrels = kb.chunks["doc_id"].astype(str).to_numpy(), qrels_of(rows)
    scores = {}
    for v in grid:
        kw = {"dense_weight": float(v)} if key == "dense_weight" else {"dense_weight": float(s["dense_weight"]), "rrf_k": int(v)}
        idx, _ = fuse(d, b, top_k, fusion, **kw)
        scores[v] = ranking_score(qids, idx, doc_ids, qrels, metric)
    smooth = {v: float(np.mean([scores[u] for u in grid[max(0, i - 1):i + 2]])) for i, v in enumerate(grid)}
    best = max(grid, key=lambda v: (round(smooth[v], 10), -abs(float(v) - default)))
    ids_hash = sha256_text("\n".join(f"{q}\t{t}" for q, t in zip(qids, questions)))
    return {"fusion": fusion, key: best,
            "tuned": {"split": split, "metric": metric, "key": key, "questions": len(rows),
                      "questions_sha256": ids_hash, "selection": "best mean of each value and its grid neighbours",
                      "scores": {str(v): round(sc, 5) for v, sc in scores.items()}}}


def apply_tuned_fusion(kb, rows: list[dict], **kwargs):
    """Tune the hybrid fusion of a built KB on rows and rebuild its manifest with the result (same chunks,
    same embeddings; the bm25 and dense indexes are rebuilt with their recorded settings). Returns the new KB."""
    from nanochat.retrieval.kb import CHUNKS, EMBEDDINGS, build_knowledge_base_from_chunks
    tuned = tune_fusion(kb, rows, **kwargs)
    old = {t: dict(v.get("settings") or {}) for t, v in kb.manifest["retrievers"].items()}
    settings = {"bm25": old.get("bm25", {}), "dense": old.get("dense", {}), "hybrid": {**old["hybrid"], **tuned}}
    return build_knowledge_base_from_chunks(kb.path / CHUNKS, kb.path, ["hybrid"], embeddings_path=kb.path / EMBEDDINGS,
                                            embedder_info=dict(kb.manifest["embedding"]), retriever_settings=settings,
                                            chunker=kb.manifest.get("chunker"), show_progress=False)
