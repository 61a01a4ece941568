"""Dense (FAISS) and hybrid (dense + BM25 fusion) retrievers.

    python -m pytest tests/test_retrievers_dense.py -q
"""
import json
import types

import numpy as np
import pandas as pd
import pytest

from nanochat.retrieval.dense import DenseRetriever
from nanochat.retrieval.hybrid import HybridRetriever, fuse, interpolate_scores, minmax, rrf_scores

DOCS = [
    {"id": "pets", "title": "Cat care", "content": "Feed your kitten twice a day and take it to the veterinarian every year."},
    {"id": "refund", "title": "Return Policy", "content": "Customers can return items within 30 days of purchase with the original receipt."},
    {"id": "ship", "title": "Shipping", "content": "Standard delivery takes three to five business days; express costs extra."},
    {"id": "space", "title": "Mars rovers", "content": "NASA landed the Perseverance rover in Jezero crater to search for signs of ancient life."},
    {"id": "bake", "title": "Sourdough", "content": "Mix flour, water and starter, let the dough rise overnight, then bake at high heat."},
    {"id": "acct", "title": "Account Creation", "content": "Click Sign Up and enter your email address to open an account."},
]


def fake_kb(path, manifest=None):
    """Stand-in for a loaded KnowledgeBase: only what retrievers' load() reads."""
    return types.SimpleNamespace(path=path, manifest=manifest or {})


def unit_rows(n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_kinds_find_each_vector_itself(tmp_path, kind):
    emb = unit_rows(400, 16)
    chunks = pd.DataFrame({"id": [str(i) for i in range(400)]})
    used = DenseRetriever.build(tmp_path, chunks, {"index": kind, "nlist": 8, "nprobe": 8}, emb)
    assert used["index_kind"] == kind and (tmp_path / "dense" / "index.faiss").is_file()
    r = DenseRetriever.load(fake_kb(tmp_path))
    idx, scores = r.search_vectors(emb[:50], 5)
    assert (idx[:, 0] == np.arange(50)).mean() >= (1.0 if kind != "hnsw" else 0.95)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    # exact reference for the flat index
    if kind == "flat":
        ref = np.argsort(-(emb[:50] @ emb.T), axis=1)[:, :5]
        np.testing.assert_array_equal(idx, ref)


def test_auto_switches_to_ivf_above_threshold_and_pads(tmp_path):
    emb = unit_rows(120, 8)
    chunks = pd.DataFrame({"id": [str(i) for i in range(120)]})
    assert DenseRetriever.build(tmp_path, chunks, {"ivf_threshold": 100}, emb)["index_kind"] == "ivf"
    assert DenseRetriever.build(tmp_path, chunks, {"ivf_threshold": 1000}, emb)["index_kind"] == "flat"
    r = DenseRetriever.load(fake_kb(tmp_path))
    idx, scores = r.search_vectors(emb[:2], 130)  # more than the index holds
    assert idx.shape == (2, 130) and (idx[:, 120:] == -1).all() and np.isneginf(scores[:, 120:]).all()
    with pytest.raises(ValueError, match="120 chunks"):
        DenseRetriever.build(tmp_path, chunks.iloc[:120], {}, emb[:100])


@pytest.fixture(scope="module")
def real_kb(tmp_path_factory):
    from nanochat.retrieval import build_knowledge_base
    path = tmp_path_factory.mktemp("kb")
    build_knowledge_base(DOCS, path, retriever_types=("hybrid",), precision="fp32",
                         retriever_settings={"bm25": {"backend": "numpy"}}, show_progress=False)
    return path


def test_dense_semantic_paraphrase_through_manager(real_kb):
    from nanochat.retrieval import RetrievalManager
    m = RetrievalManager(retriever_type="dense", knowledge_base_path=real_kb)
    # no content word shared with the right document: only meaning connects them
    queries = ["How often should my young feline eat?", "Can I send back something I bought?",
               "robot exploring the red planet"]
    idx, scores = m.search_batch(queries, top_k=3)
    got = [m.kb.chunks["doc_id"].iloc[i[0]] for i in idx]
    assert got == ["pets", "refund", "space"]
    assert np.all(scores[:, 0] > scores[:, 1])
    doc = m.retrieve("bread dough rising", top_k=1)[0]
    assert doc.metadata["doc_id"] == "bake" and 0 < doc.score <= 1.0
    assert json.loads((real_kb / "dense" / "settings.json").read_text())["model"] == "all-MiniLM-L6-v2"


def test_int8_kb_has_own_id_and_queries_follow_manifest_precision(real_kb, tmp_path):
    from nanochat.retrieval import RetrievalManager, build_knowledge_base
    from nanochat.retrieval.kb import KnowledgeBase
    fp32 = KnowledgeBase.load(real_kb)
    kb8 = build_knowledge_base(DOCS, tmp_path / "kb8", retriever_types=("dense",), precision="int8", show_progress=False)
    assert kb8.manifest["embedding"]["precision"] == "int8" and kb8.kb_id != fp32.kb_id
    m = RetrievalManager(retriever_type="dense", knowledge_base_path=tmp_path / "kb8")
    r = m.kb.retriever("dense")
    assert r.settings["precision"] == "int8"                           # from the manifest, not the "auto" default
    assert fp32.retriever("dense").settings["precision"] == "fp32"
    assert fp32.retriever("dense", precision="int8").settings["precision"] == "int8"  # explicit override wins
    idx, _ = m.search_batch(["How often should my young feline eat?", "robot exploring the red planet"], top_k=1)
    assert [m.kb.chunks["doc_id"].iloc[i[0]] for i in idx] == ["pets", "space"]
    # memory-mapped, read-only embeddings on load
    assert isinstance(kb8.embeddings, np.memmap) and not kb8.embeddings.flags.writeable


def test_hybrid_through_manager_both_fusions(real_kb):
    from nanochat.retrieval import RetrievalManager
    for fusion in ("interpolate", "rrf"):
        m = RetrievalManager(retriever_type="hybrid", knowledge_base_path=real_kb, fusion=fusion)
        idx, scores = m.search_batch(["return items receipt 30 days", "feline diet"], top_k=4)
        assert [m.kb.chunks["doc_id"].iloc[i[0]] for i in idx] == ["refund", "pets"], fusion
        assert idx.shape == (2, 4) and np.all(np.diff(scores, axis=1) <= 0)
    with pytest.raises(ValueError, match="fusion must be one of"):
        RetrievalManager(retriever_type="hybrid", knowledge_base_path=real_kb, fusion="max")


def test_rrf_math():
    # list A ranks 7, 3, 5; list B ranks 3, 9. k = 60
    fused = rrf_scores([np.array([7, 3, 5, -1]), np.array([3, 9, -1, -1])], k=60)
    assert fused[3] == pytest.approx(1 / 62 + 1 / 61)
    assert fused[7] == pytest.approx(1 / 61) and fused[9] == pytest.approx(1 / 62) and fused[5] == pytest.approx(1 / 63)
    assert -1 not in fused
    idx, sc = fuse((np.array([[7, 3, 5, -1]]), np.array([[0.9, 0.8, 0.1, -np.inf]])),
                   (np.array([[3, 9, -1, -1]]), np.array([[12.0, 3.0, -np.inf, -np.inf]])), top_k=5, fusion="rrf", dense_weight=0.5)
    # 7 and 9 tie at 1/61 vs 1/62: 7 first; ties broken by lower index
    assert idx[0].tolist() == [3, 7, 9, 5, -1] and np.isneginf(sc[0, 4])


def test_interpolation_math():
    np.testing.assert_allclose(minmax(np.array([2.0, 4.0, 3.0])), [0.0, 1.0, 0.5])
    np.testing.assert_allclose(minmax(np.array([5.0, 5.0])), [1.0, 1.0])
    dense = (np.array([1, 2, 3]), np.array([0.9, 0.7, 0.5]))     # minmax -> 1, .5, 0
    sparse = (np.array([3, 4, -1]), np.array([10.0, 2.0, -np.inf]))  # minmax -> 1, 0
    fused = interpolate_scores([dense, sparse], [0.4, 0.6])
    assert fused == pytest.approx({1: 0.4, 2: 0.2, 3: 0.6, 4: 0.0})
    idx, sc = fuse((dense[0][None], dense[1][None]), (sparse[0][None], sparse[1][None]), top_k=3, dense_weight=0.4)
    assert idx[0].tolist() == [3, 1, 2] and sc[0].tolist() == pytest.approx([0.6, 0.4, 0.2])
    # weight 1.0 reproduces the dense order, 0.0 the BM25 order
    assert fuse((dense[0][None], dense[1][None]), (sparse[0][None], sparse[1][None]), 2, dense_weight=1.0)[0][0].tolist() == [1, 2]
    assert fuse((dense[0][None], dense[1][None]), (sparse[0][None], sparse[1][None]), 1, dense_weight=0.0)[0][0].tolist() == [3]


def test_hybrid_build_requires_dense_and_bm25(tmp_path):
    with pytest.raises(FileNotFoundError, match="reuses the dense index"):
        HybridRetriever.build(tmp_path, pd.DataFrame({"id": ["a"]}), {}, None)
    with pytest.raises(ValueError, match="unknown hybrid setting"):
        HybridRetriever.build(tmp_path, pd.DataFrame({"id": ["a"]}), {"alpha": 1}, None)
