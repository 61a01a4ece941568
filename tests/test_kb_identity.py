"""kb_id hashes content and settings only, and every KB file is byte-reproducible (issue 18).

Run: python -m pytest -q tests/test_kb_identity.py
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nanochat.data.chunking import chunk_documents, main as chunking_main, write_chunks
from nanochat.data.documents import load_documents
from nanochat.retrieval import KnowledgeBase, build_knowledge_base
from nanochat.retrieval.kb import build_knowledge_base_from_chunks, identity_chunker, kb_id_of

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]
SETTINGS = dict(chunk_tokens=16, chunk_overlap=4, show_progress=False)


def files_of(kb_dir: Path) -> dict:
    """relative path -> bytes of every file in a KB directory."""
    return {p.relative_to(kb_dir).as_posix(): p.read_bytes() for p in sorted(kb_dir.rglob("*")) if p.is_file()}


def manifest(kb_dir: Path) -> dict:
    return json.loads((kb_dir / "manifest.json").read_text())


def test_same_documents_at_two_paths_give_one_kb_id(tmp_path):
    a = tmp_path / "here" / "documents.jsonl"
    b = tmp_path / "elsewhere" / "deeper" / "copy.jsonl"
    for p in (a, b):
        p.parent.mkdir(parents=True)
        shutil.copy(DATA / "docs_valid.jsonl", p)
    one = build_knowledge_base(a, tmp_path / "kb" / "one", ["simple", "bm25"], **SETTINGS)
    four = build_knowledge_base(b, tmp_path / "other" / "four", ["simple", "bm25"], **SETTINGS)
    assert one.kb_id == four.kb_id
    m1, m2 = manifest(one.path), manifest(four.path)
    assert m1["inputs"] == {"documents": str(a)} and m2["inputs"] == {"documents": str(b)}  # provenance, outside the id
    assert {k: v for k, v in m1.items() if k != "inputs"} == {k: v for k, v in m2.items() if k != "inputs"}
    assert kb_id_of(m1["identity"]) == m1["kb_id"] and "created_at" not in m1
    assert str(tmp_path) not in json.dumps(m1["identity"])
    f1, f2 = files_of(one.path), files_of(four.path)
    assert {k: v for k, v in f1.items() if k != "manifest.json"} == {k: v for k, v in f2.items() if k != "manifest.json"}
    # ... while what the KB holds still counts: other chunking or other index settings give another kb_id
    coarse = build_knowledge_base(a, tmp_path / "kb" / "coarse", ["simple", "bm25"], show_progress=False)
    k1 = build_knowledge_base(a, tmp_path / "kb" / "k1", ["simple", "bm25"], bm25_settings={"k1": 1.2}, **SETTINGS)
    assert len({one.kb_id, coarse.kb_id, k1.kb_id}) == 3


def test_cli_build_and_dag_build_of_the_same_documents_match(tmp_path):
    """The guide's one-step CLI and the workflow's chunk -> build_index route give one kb_id."""
    docs = DATA / "docs_valid.jsonl"
    cli = build_knowledge_base(docs, tmp_path / "cli_kb", ["simple", "bm25"], **SETTINGS)
    chunks = tmp_path / "results" / "kb" / "one" / "chunks.parquet"
    assert chunking_main(["--input", str(docs), "--output", str(chunks), "--chunk_tokens", "16", "--overlap", "4"]) == 0
    dag = build_knowledge_base_from_chunks(chunks, tmp_path / "results" / "kb" / "one" / "bm25", ["simple", "bm25"],
                                           show_progress=False)
    assert dag.kb_id == cli.kb_id
    assert dag.manifest["chunker"] == cli.manifest["chunker"] == {"chunk_tokens": 16, "overlap": 4,
                                                                 "tokenizer": "regex-word-punct-v1"}
    assert dag.manifest["inputs"] == {"chunks": str(chunks)}
    # the KB's own chunks.parquet carries the settings on: a KB built from it keeps the identity
    again = build_knowledge_base_from_chunks(dag.path / "chunks.parquet", tmp_path / "again", ["simple", "bm25"],
                                             show_progress=False)
    assert again.kb_id == cli.kb_id


def test_chunks_without_settings_are_path_free_too(tmp_path):
    """Chunks from another tool (no chunker settings stored) at two paths; a legacy path-bearing chunker is ignored."""
    rows = chunk_documents(load_documents(DATA / "docs_valid.jsonl"), 16, 4)
    ids = []
    for name in ("a", "b"):
        write_chunks(rows, tmp_path / name / "chunks.parquet")
        kb = build_knowledge_base_from_chunks(tmp_path / name / "chunks.parquet", tmp_path / name / "kb", ["bm25"],
                                              show_progress=False)
        assert kb.manifest["chunker"] is None and kb.manifest["identity"]["chunker"] is None
        ids.append(kb.kb_id)
    legacy = build_knowledge_base_from_chunks(tmp_path / "a" / "chunks.parquet", tmp_path / "legacy", ["bm25"],
                                              chunker={"source": str(tmp_path / "a" / "chunks.parquet")},
                                              show_progress=False)
    assert ids[0] == ids[1] == legacy.kb_id
    assert identity_chunker({"source": "results/kb/one/chunks.parquet", "chunk_tokens": 8}) == {"chunk_tokens": 8}


def test_dense_kb_id_ignores_embedding_paths(tmp_path):
    rows = chunk_documents(load_documents(DATA / "docs_valid.jsonl"), 16, 4)
    vecs = np.random.default_rng(0).standard_normal((len(rows), 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    info = {"model": "all-MiniLM-L6-v2", "precision": "fp32", "model_path": "/somewhere/site-packages/model"}
    kbs = []
    for name in ("one", "four"):
        d = tmp_path / "results" / "kb" / name
        write_chunks(rows, d / "chunks.parquet", {"chunk_tokens": 16, "overlap": 4})
        np.save(d / "embeddings.npy", vecs)
        kbs.append(build_knowledge_base_from_chunks(d / "chunks.parquet", d / "dense", ["dense"],
                                                    embeddings_path=d / "embeddings.npy",
                                                    embedder_info={**info, "model_path": str(d)}, show_progress=False))
    assert kbs[0].kb_id == kbs[1].kb_id
    assert kbs[0].manifest["identity"]["embedder"] == {"model": "all-MiniLM-L6-v2", "precision": "fp32", "dimension": 8}
    assert kbs[0].manifest["inputs"]["embeddings"].endswith("one/embeddings.npy")


def test_folder_of_documents_moved_keeps_kb_id(tmp_path):
    for where in ("a", "b/c"):
        folder = tmp_path / where / "docs"
        (folder / "guides").mkdir(parents=True)
        (folder / "guides" / "setup.md").write_text("# Installing\nRun the installer, then restart.\n")
        (folder / "notes.txt").write_text("Refunds take five days.\n")
    kb_a = build_knowledge_base(tmp_path / "a" / "docs", tmp_path / "kb_a", ["simple"], show_progress=False)
    kb_b = build_knowledge_base(tmp_path / "b" / "c" / "docs", tmp_path / "kb_b", ["simple"], show_progress=False)
    assert kb_a.kb_id == kb_b.kb_id
    assert sorted(kb_a.chunks["source"]) == ["guides/setup.md", "notes.txt"]  # relative to the folder, not absolute


# -----------------------------------------------------------------------------
# Byte-reproducible builds whatever PYTHONHASHSEED is

def _build_in_subprocess(cwd: Path, seed: int, code: str, threads: int | None = None) -> None:
    env = {**os.environ, "PYTHONHASHSEED": str(seed), "PYTHONPATH": str(ROOT)}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, check=True, capture_output=True, text=True,
                   timeout=600)


def _assert_same_trees(a: Path, b: Path) -> None:
    fa, fb = files_of(a), files_of(b)
    assert sorted(fa) == sorted(fb)
    differing = [rel for rel in fa if fa[rel] != fb[rel]]
    assert not differing, f"files differ between builds: {differing}"


def test_cli_build_is_byte_identical_under_two_hash_seeds(tmp_path):
    """All four index types plus embeddings, chunks and manifest, from the guide's CLI, in two folders."""
    cli = ("from nanochat.retrieval.__main__ import main; "
           "raise SystemExit(main(['--documents', 'docs.jsonl', '--output', 'kb', '--type', 'simple,bm25,dense,hybrid']))")
    for seed, folder in ((1, tmp_path / "a"), (2, tmp_path / "b")):
        folder.mkdir()
        shutil.copy(DATA / "docs_valid.jsonl", folder / "docs.jsonl")
        _build_in_subprocess(folder, seed, cli)
    _assert_same_trees(tmp_path / "a" / "kb", tmp_path / "b" / "kb")
    kb = KnowledgeBase.load(tmp_path / "a" / "kb")
    assert kb.retriever_types == ["simple", "bm25", "dense", "hybrid"] and kb.embeddings is not None
    vocab = json.loads((tmp_path / "a" / "kb" / "bm25" / "vocab.index.json").read_text())
    terms = [t for t in vocab if t]  # bm25s appends its empty token last
    assert terms == sorted(terms) and list(vocab.values()) == list(range(len(vocab)))


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_faiss_indexes_are_byte_identical_across_seeds_and_threads(tmp_path, kind):
    """Same vectors -> same index.faiss, under two hash seeds and 1 vs 2 OpenMP threads (IVF trains k-means)."""
    code = f"""
import numpy as np
from nanochat.data.chunking import write_chunks
from nanochat.retrieval.kb import build_knowledge_base_from_chunks
n = 3000
rows = [{{"id": f"d{{i}}#0", "doc_id": f"d{{i}}", "chunk_index": 0, "title": "", "content": f"passage {{i}}"}} for i in range(n)]
write_chunks(rows, "chunks.parquet")
v = np.random.default_rng(0).standard_normal((n, 24)).astype(np.float32)
np.save("emb.npy", v / np.linalg.norm(v, axis=1, keepdims=True))
build_knowledge_base_from_chunks("chunks.parquet", "kb", ["dense"], embeddings_path="emb.npy",
                                 embedder_info={{"model": "fake", "precision": "fp32"}},
                                 retriever_settings={{"dense": {{"index": "{kind}", "hnsw_m": 8}}}}, show_progress=False)
"""
    for seed, threads, folder in ((1, 1, tmp_path / "a"), (2, 2, tmp_path / "b")):
        folder.mkdir()
        _build_in_subprocess(folder, seed, code, threads)
    _assert_same_trees(tmp_path / "a" / "kb", tmp_path / "b" / "kb")
    settings = json.loads((tmp_path / "a" / "kb" / "dense" / "settings.json").read_text())
    assert settings["index_kind"] == kind
