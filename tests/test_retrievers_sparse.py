"""TF-IDF and BM25 retrievers on a small fixture with known answers (through the KB and the manager).

Run: python -m pytest -q tests/test_retrievers_sparse.py
"""
import numpy as np
import pytest

from nanochat.retrieval import RetrievalManager, build_knowledge_base
from nanochat.retrieval.bm25 import Tokenizer, numba_available
from nanochat.retrieval.simple import top_k_dense

DOCS = [
    {"id": "returns", "title": "Return Policy", "content": "Customers can return items within 30 days of purchase with the receipt."},
    {"id": "shipping", "title": "Shipping", "content": "Free shipping on orders over $50. Standard delivery takes 3-5 business days."},
    {"id": "account", "title": "Account Creation", "content": "Click Sign Up and enter your email address to create an account."},
    {"id": "password", "title": "Password Reset", "content": "Forgot your password? Use the reset link we email to you."},
    {"id": "warranty", "title": "Warranty", "content": "Electronics carry a two year warranty against manufacturing defects."},
]
QUERIES = [("how do I return an item", "returns"), ("delivery time for standard shipping", "shipping"),
           ("create a new account with email", "account"), ("reset my forgotten password", "password"),
           ("warranty for electronics defects", "warranty")]


@pytest.fixture(scope="module")
def kb_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("kb")
    build_knowledge_base(DOCS, path, ["simple", "bm25"], show_progress=False)
    return path


@pytest.mark.parametrize("rtype", ["simple", "bm25"])
def test_known_answers_rank_first(kb_path, rtype):
    m = RetrievalManager(retriever_type=rtype, knowledge_base_path=kb_path)
    results = m.retrieve_batch([q for q, _ in QUERIES], top_k=3)
    assert [r[0].metadata["doc_id"] for r in results] == [d for _, d in QUERIES]
    for r in results:
        scores = [d.score for d in r]
        assert scores == sorted(scores, reverse=True) and scores[0] > 0
        assert [d.metadata["rank"] for d in r] == list(range(1, len(r) + 1))
    one = m.retrieve("return policy", top_k=2)
    assert one[0].id == "returns#0" and one[0].title == "Return Policy" and "30 days" in one[0].content


@pytest.mark.parametrize("rtype", ["simple", "bm25"])
def test_padding_when_fewer_hits_than_k(kb_path, rtype):
    m = RetrievalManager(retriever_type=rtype, knowledge_base_path=kb_path)
    idx, scores = m.search_batch(["warranty", "zzzz qqqq", ""], top_k=8)
    assert idx.shape == (3, 8) and idx.dtype == np.int64 and scores.dtype == np.float32
    assert idx[0, 0] == 4 and (idx[0, 1:] == -1).all() and np.isneginf(scores[0, 1:]).all()
    assert (idx[1:] == -1).all()           # no shared term: nothing is a hit
    assert m.retrieve("zzzz", top_k=3) == []


def test_simple_scores_are_cosines(kb_path):
    m = RetrievalManager(retriever_type="simple", knowledge_base_path=kb_path)
    _, s = m.search_batch(["Return Policy Customers can return items within 30 days of purchase with the receipt."], 1)
    assert 0.95 < s[0, 0] <= 1.0 + 1e-5


def test_bm25_tokenizer_stems_and_drops_stopwords():
    tok = Tokenizer()
    assert tok("The shipping of the items") == ["ship", "item"]
    assert Tokenizer(stemmer=None)("The shipping of the items") == ["shipping", "items"]


@pytest.mark.slow  # numba JIT compile: ~10-30 s
@pytest.mark.skipif(not numba_available(), reason="numba not installed")
def test_bm25_numba_and_numpy_backends_agree(kb_path):
    queries = [q for q, _ in QUERIES] + ["free email link"]
    a = RetrievalManager("bm25", kb_path, backend="numpy").search_batch(queries, 5)
    b = RetrievalManager("bm25", kb_path, backend="numba").search_batch(queries, 5)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5)
    assert (a[0][:, 0] == b[0][:, 0]).all()


def test_bm25_settings_recorded_and_validated(kb_path, tmp_path):
    from nanochat.retrieval import KnowledgeBase
    kb = KnowledgeBase.load(kb_path)
    s = kb.manifest["retrievers"]["bm25"]["settings"]
    assert (s["k1"], s["b"], s["method"], s["stemmer"]) == (1.5, 0.75, "lucene", "english")
    with pytest.raises(ValueError, match="unknown bm25 setting"):
        build_knowledge_base(DOCS, tmp_path / "kb2", ["bm25"], bm25_settings={"k3": 1.0}, show_progress=False)


def test_top_k_dense_orders_and_pads():
    idx, s = top_k_dense(np.array([[0.1, 0.9, 0.0, 0.5]], np.float32), 5)
    assert idx.tolist() == [[1, 3, 0, -1, -1]] and s[0, :3].tolist() == pytest.approx([0.9, 0.5, 0.1])
