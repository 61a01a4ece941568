"""Large-KB dense indexes: kind chosen by size, IVF-PQ / IVF-SQ8 trained on a sample with their parameters in the
manifest, memory-mapped loading, exact re-scoring, search settings from the CLI and at load.

    python -m pytest -q tests/test_ann_index.py
"""
import json
import types

import numpy as np
import pandas as pd
import pytest

from nanochat.retrieval import ann
from nanochat.retrieval.dense import DenseRetriever, choose_kind

D = 32


def clustered(n, d=D, centers=60, seed=0):
    """Unit vectors around a few centres (what sentence embeddings look like), not uniform noise."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.35 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def chunks(n):
    return pd.DataFrame({"id": [f"c{i}" for i in range(n)], "doc_id": [f"c{i}" for i in range(n)], "title": "",
                         "content": [f"passage {i}" for i in range(n)]})


def build(tmp_path, n, **settings):
    emb = clustered(n)
    np.save(tmp_path / "embeddings.npy", emb)
    used = DenseRetriever.build(tmp_path, chunks(n), {"model": "fake", **settings}, emb)
    kb = types.SimpleNamespace(path=tmp_path, manifest={"embedding": {"model": "fake", "precision": "fp32"}})
    return emb, used, kb


def recall_at_10(approx, exact):
    return float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)]))


def test_index_kind_by_size():
    s = {**DenseRetriever.DEFAULTS}
    assert choose_kind(s, 49_999) == "flat" and choose_kind(s, 50_000) == "ivf"
    assert choose_kind(s, 499_999) == "ivf" and choose_kind(s, 500_000) == "ivf_pq"
    assert choose_kind({**s, "compressed": "ivf_sq8"}, 10**7) == "ivf_sq8"
    assert choose_kind({**s, "index": "hnsw"}, 10) == "hnsw"
    with pytest.raises(ValueError, match="dense index must be one of"):
        choose_kind({**s, "index": "lsh"}, 10)


@pytest.mark.parametrize("kind", ["ivf_pq", "ivf_sq8"])
def test_compressed_index_recorded_mmapped_and_refined(tmp_path, kind):
    import faiss
    emb, used, kb = build(tmp_path, 6000, index="auto", ivf_threshold=1000, compress_threshold=5000, compressed=kind,
                          pq_m=8, nlist=32)
    assert used["index_kind"] == kind
    params = used["index_params"]
    wanted = max(ann.TRAIN_PER_LIST * 32, 256 * 64) if kind == "ivf_pq" else ann.TRAIN_PER_LIST * 32
    assert params["nlist"] == 32 and params["train_rows"] == min(6000, wanted)  # a sample, capped at the rows there are
    assert params["code_size"] == (8 if kind == "ivf_pq" else D)
    assert json.loads((tmp_path / "dense" / "settings.json").read_text())["index_params"] == params
    r = DenseRetriever.load(kb, nprobe=16, refine=10)
    invlists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(r.index).invlists)
    assert type(invlists).__name__ == "OnDiskInvertedLists"  # IO_FLAG_MMAP: the lists stay in the file
    assert r.index.nprobe == 16
    queries = clustered(200, seed=1)
    exact = (queries @ emb.T).argsort(axis=1)[:, ::-1][:, :10]
    refined, scores = r.search_vectors(queries, 10)
    assert recall_at_10(refined, exact) >= 0.9
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ emb.T, refined, axis=1), rtol=1e-5)  # exact scores
    raw, _ = DenseRetriever.load(kb, nprobe=16, refine=0).search_vectors(queries, 10)
    assert recall_at_10(raw, exact) <= recall_at_10(refined, exact)
    plain = DenseRetriever.load(kb, mmap="false")
    assert type(faiss.downcast_InvertedLists(faiss.extract_index_ivf(plain.index).invlists)).__name__ == "ArrayInvertedLists"


def test_compressed_build_is_reproducible(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    build(tmp_path / "a", 3000, index="ivf_pq", pq_m=8, nlist=16)
    build(tmp_path / "b", 3000, index="ivf_pq", pq_m=8, nlist=16)
    assert (tmp_path / "a/dense/index.faiss").read_bytes() == (tmp_path / "b/dense/index.faiss").read_bytes()


def test_pq_m_must_divide_the_dimension(tmp_path):
    with pytest.raises(ValueError, match="must divide the embedding dimension"):
        build(tmp_path, 3000, index="ivf_pq", pq_m=7)


def test_refine_pads_missing_candidates():
    emb = clustered(20)
    cand = np.array([[3, 5, -1, -1], [-1, -1, -1, -1]])
    idx, scores = ann.refine(emb, emb[[3, 0]], cand, 3)
    assert idx[0, 0] == 3 and set(idx[0, :2]) == {3, 5} and idx[0, 2] == -1 and np.isneginf(scores[0, 2])
    assert (idx[1] == -1).all()


def test_cli_settings_reach_the_index(tmp_path):
    """--index/--pq_m/--nlist/--nprobe at build are recorded; --nprobe/--refine at query time override them."""
    from nanochat.retrieval.__main__ import build_parser
    from nanochat.retrieval.dense import dense_flag_settings
    args = build_parser().parse_args(["--chunks", "c.parquet", "--output", str(tmp_path / "kb"), "--type", "dense",
                                      "--index", "ivf_pq", "--pq_m", "8", "--nprobe", "16", "--refine", "2"])
    assert dense_flag_settings(args) == {"index": "ivf_pq", "pq_m": 8, "nprobe": 16, "refine": 2}
    assert dense_flag_settings(args, build=False) == {"nprobe": 16, "refine": 2}
    from nanochat.retrieval.precompute import build_parser as pre_parser
    pre = pre_parser().parse_args(["--knowledge_base", "kb", "--queries", "test=q.jsonl", "--output",
                                   str(tmp_path / "r.parquet"), "--ef_search", "64"])
    assert dense_flag_settings(pre, build=False) == {"ef_search": 64}
