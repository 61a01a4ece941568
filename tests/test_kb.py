"""Knowledge-base format: round trip, checksums, refusals, rebuilds, embeddings plumbing.

Run: python -m pytest -q tests/test_kb.py
"""
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import nanochat.retrieval.kb as kbmod
from nanochat.retrieval import KnowledgeBase, KnowledgeBaseError, RetrievalManager, build_knowledge_base
from nanochat.retrieval.base import Retriever
from nanochat.retrieval.kb import build_knowledge_base_from_chunks

DATA = Path(__file__).parent / "data"


@pytest.fixture()
def kb_path(tmp_path):
    build_knowledge_base(DATA / "docs_valid.jsonl", tmp_path / "kb", ["simple", "bm25"], chunk_tokens=16, chunk_overlap=4,
                         show_progress=False)
    return tmp_path / "kb"


def test_round_trip_manifest_and_chunks(kb_path):
    kb = KnowledgeBase.load(kb_path)
    m = kb.manifest
    assert m["format"] == "nanochat-kb" and m["format_version"] == 1 and len(kb.kb_id) == 64
    assert m["counts"] == {"documents": 3, "chunks": len(kb.chunks)} and len(kb.chunks) > 3  # 16-token chunks split docs
    assert m["chunker"]["chunk_tokens"] == 16 and m["embedding"] is None and kb.embeddings is None
    assert kb.retriever_types == ["simple", "bm25"]
    assert set(m["files"]) == {"chunks.parquet", *m["retrievers"]["simple"]["files"], *m["retrievers"]["bm25"]["files"]}
    assert all(not f.endswith((".pkl", ".pickle")) for f in m["files"])
    doc = kb.document(0, 1.5, rank=1)
    assert doc.id == "sky#0" and doc.metadata["doc_id"] == "sky" and doc.metadata["topic"] == "optics" and doc.source == "physics.txt"
    # same inputs -> same kb_id; different chunking -> different kb_id
    again = build_knowledge_base(DATA / "docs_valid.jsonl", kb_path.parent / "kb2", ["simple", "bm25"], chunk_tokens=16,
                                 chunk_overlap=4, show_progress=False)
    other = build_knowledge_base(DATA / "docs_valid.jsonl", kb_path.parent / "kb3", ["simple", "bm25"], show_progress=False)
    assert again.kb_id == kb.kb_id and other.kb_id != kb.kb_id


@pytest.mark.parametrize("victim", ["chunks.parquet", "simple/tfidf.npz", "bm25/vocab.index.json"])
def test_flipped_byte_is_detected(kb_path, victim):
    p = kb_path / victim
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    p.write_bytes(bytes(raw))
    with pytest.raises(KnowledgeBaseError, match=f"corrupted: .*{victim}"):
        KnowledgeBase.load(kb_path)


def test_truncated_and_missing_files(kb_path):
    (kb_path / "simple" / "vocab.json").write_text("[]")
    with pytest.raises(KnowledgeBaseError, match="vocab.json has 2 bytes"):
        KnowledgeBase.load(kb_path)
    (kb_path / "chunks.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"(?s)^Knowledge base not found: .*missing file\(s\) chunks.parquet"):
        KnowledgeBase.load(kb_path)


def test_not_found_names_path_and_expected_files(tmp_path):
    for path in (tmp_path / "nope", tmp_path):
        with pytest.raises(FileNotFoundError) as e:
            RetrievalManager("simple", path)
        msg = str(e.value)
        assert msg.startswith(f"Knowledge base not found: {path}") and "manifest.json" in msg and "chunks.parquet" in msg


def test_old_and_foreign_formats_are_refused(tmp_path, kb_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "documents.pkl").write_bytes(b"\x80\x04")
    (old / "metadata.json").write_text("{}")
    with pytest.raises(KnowledgeBaseError, match="Unsupported knowledge base format.*documents.pkl"):
        KnowledgeBase.load(old)
    m = json.loads((kb_path / "manifest.json").read_text())
    (kb_path / "manifest.json").write_text(json.dumps({**m, "format_version": 0}))
    with pytest.raises(KnowledgeBaseError, match="format version 0 is not supported"):
        KnowledgeBase.load(kb_path)
    (kb_path / "manifest.json").write_text(json.dumps({"name": "some other tool"}))
    with pytest.raises(KnowledgeBaseError, match="foreign file"):
        KnowledgeBase.load(kb_path)
    (kb_path / "manifest.json").write_text("not json")
    with pytest.raises(KnowledgeBaseError, match="invalid JSON"):
        KnowledgeBase.load(kb_path)


def test_missing_index_lists_available_and_command(kb_path):
    with pytest.raises(KnowledgeBaseError) as e:
        RetrievalManager("dense", kb_path)
    assert "has no 'dense' index (it has: simple, bm25)" in str(e.value)
    assert f"--chunks {kb_path / 'chunks.parquet'} --output {kb_path} --type dense" in str(e.value)


def test_rebuild_adds_index_and_drops_stale_ones(kb_path, tmp_path):
    build_knowledge_base(DATA / "docs_valid.jsonl", tmp_path / "kb", ["simple"], chunk_tokens=16, chunk_overlap=4, show_progress=False)
    assert KnowledgeBase.load(kb_path).retriever_types == ["simple", "bm25"]   # same chunks: bm25 kept
    build_knowledge_base(DATA / "docs_no_title.jsonl", kb_path, ["simple"], show_progress=False)
    kb = KnowledgeBase.load(kb_path)
    assert kb.retriever_types == ["simple"] and not (kb_path / "bm25").exists()  # other chunks: bm25 was stale
    assert RetrievalManager("simple", kb_path).retrieve("document without title")[0].id == "untitled#0"


def test_interrupted_build_leaves_no_manifest(kb_path, monkeypatch):
    from nanochat.retrieval.bm25 import BM25Retriever

    def boom(*a, **k):
        raise RuntimeError("killed mid-build")
    monkeypatch.setattr(BM25Retriever, "build", classmethod(boom))
    with pytest.raises(RuntimeError):
        build_knowledge_base(DATA / "docs_valid.jsonl", kb_path, ["bm25"], show_progress=False)
    assert not (kb_path / "manifest.json").exists()
    assert not [p for p in kb_path.iterdir() if p.name.startswith(".")]   # no temp leftovers
    with pytest.raises(FileNotFoundError, match="^Knowledge base not found"):
        KnowledgeBase.load(kb_path)


# -----------------------------------------------------------------------------
# Embeddings plumbing, with a fake encoder and a brute-force dense retriever standing in for the real ones

class FakeDense(Retriever):
    name = "dense"

    @classmethod
    def build(cls, kb_dir, chunks, settings, embeddings):
        assert embeddings is not None and embeddings.shape[0] == len(chunks)
        (Path(kb_dir) / cls.name).mkdir(exist_ok=True)
        (Path(kb_dir) / cls.name / "index.json").write_text(json.dumps({"n": len(chunks)}))
        return {"metric": "ip"}

    @classmethod
    def load(cls, kb):
        r = cls()
        r.emb = kb.embeddings
        return r

    def search_batch(self, queries, top_k):
        s = fake_encode(queries) @ self.emb.T
        idx = np.argsort(-s, axis=1)[:, :top_k]
        return idx, np.take_along_axis(s, idx, axis=1)


class FakeHybrid(FakeDense):
    name = "hybrid"


def fake_encode(texts, model_name="fake", batch_size=32, precision="auto", device=None, show_progress=True):
    fake_encode.calls += 1
    v = np.array([[t.lower().count(w) + 0.01 for w in ("sky", "bread", "moon", "light")] for t in texts], np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture()
def fake_dense(monkeypatch):
    fake_encode.calls = 0
    mod = types.ModuleType("nanochat.retrieval.embeddings")
    mod.encode_texts = fake_encode
    mod.embedder_info = lambda model_name, precision="auto": {"model": model_name, "precision": precision, "library": "fake"}
    monkeypatch.setitem(sys.modules, "nanochat.retrieval.embeddings", mod)
    real = kbmod.get_retriever_class
    fakes = {"dense": FakeDense, "hybrid": FakeHybrid}
    monkeypatch.setattr(kbmod, "get_retriever_class", lambda name: fakes.get(name) or real(name))


def test_embeddings_computed_once_stored_and_reused(tmp_path, fake_dense):
    kb = build_knowledge_base(DATA / "docs_valid.jsonl", tmp_path / "kb", ["hybrid"], model="fake-model", show_progress=False)
    assert kb.retriever_types == ["bm25", "dense", "hybrid"]          # hybrid pulls in its two parts
    assert fake_encode.calls == 1 and kb.embeddings.shape == (3, 4) and kb.embeddings.dtype == np.float32
    e = kb.manifest["embedding"]
    assert (e["model"], e["dimension"], e["normalized"], e["library"]) == ("fake-model", 4, True, "fake")
    assert "embeddings.npy" in kb.manifest["files"]
    build_knowledge_base(DATA / "docs_valid.jsonl", tmp_path / "kb", ["dense", "simple"], model="fake-model", show_progress=False)
    assert fake_encode.calls == 1                                      # same chunks + model: reused
    assert KnowledgeBase.load(tmp_path / "kb").retriever_types == ["simple", "bm25", "dense", "hybrid"]


def test_build_from_stage_outputs(tmp_path, fake_dense):
    from nanochat.data.chunking import chunk_documents, write_chunks
    from nanochat.data.documents import load_documents
    write_chunks(chunk_documents(load_documents(DATA / "docs_valid.jsonl")), tmp_path / "chunks.parquet")
    emb = fake_encode(["sky", "bread", "moon"])
    np.save(tmp_path / "embeddings.npy", emb)
    kb = build_knowledge_base_from_chunks(tmp_path / "chunks.parquet", tmp_path / "kb", ["dense", "bm25"],
                                          embeddings_path=tmp_path / "embeddings.npy",
                                          embedder_info={"model": "fake-model", "precision": "fp32"}, show_progress=False)
    assert fake_encode.calls == 1 and np.array_equal(kb.embeddings, emb)
    assert RetrievalManager("dense", tmp_path / "kb").retrieve("moon", top_k=1)[0].id == "tides#0"
    (tmp_path / "embeddings.json").write_text(json.dumps({"model": "fake-model", "precision": "bf16", "library": "x"}))
    kb = build_knowledge_base_from_chunks(tmp_path / "chunks.parquet", tmp_path / "kb5", ["dense"],
                                          embeddings_path=tmp_path / "embeddings.npy", show_progress=False)
    assert kb.manifest["embedding"]["precision"] == "bf16"                # read from the embed stage's sidecar
    np.save(tmp_path / "bad.npy", emb[:2])
    with pytest.raises(ValueError, match=r"shape \(2, 4\), expected \(3, dim\)"):
        build_knowledge_base_from_chunks(tmp_path / "chunks.parquet", tmp_path / "kb4", ["dense"], embeddings_path=tmp_path / "bad.npy")


def test_missing_dense_extras_give_the_guides_message(tmp_path, monkeypatch):
    mod = types.ModuleType("nanochat.retrieval.embeddings")

    def encode_texts(*a, **k):
        raise ModuleNotFoundError("No module named 'sentence_transformers'", name="sentence_transformers")
    mod.encode_texts, mod.embedder_info = encode_texts, lambda *a, **k: {}
    monkeypatch.setitem(sys.modules, "nanochat.retrieval.embeddings", mod)
    with pytest.raises(ImportError) as e:
        build_knowledge_base(DATA / "docs_valid.jsonl", tmp_path / "kb", ["dense"], show_progress=False)
    msg = str(e.value)
    assert "No module named 'sentence_transformers'" in msg and "pip install sentence-transformers faiss-cpu" in msg
    assert "--type simple" in msg
