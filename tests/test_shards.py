"""Sharded KB builds and precompute blocks equal one-job builds: same files, same kb_id, same retrieval.

    python -m pytest -q tests/test_shards.py
"""
import json

import numpy as np
import pytest

from nanochat.retrieval import shards as S

DOCS = [{"id": f"d{i:02d}", "title": f"Topic {i}",
         "content": " ".join(f"Sentence {j} of document {i} mentions {w} and the number {i * j}."
                             for j, w in enumerate(["apples", "rivers", "engines", "violins", "glaciers"][: 2 + i % 4]))}
        for i in range(23)]
QUERIES = [{"id": f"q{i}", "question": f"which document mentions {w} and number {n}?", "answers": ["x"],
            "doc_ids": [f"d{n % 23:02d}"]} for i, (w, n) in enumerate(
                [("apples", 3), ("rivers", 8), ("engines", 12), ("violins", 30), ("glaciers", 44), ("apples", 7), ("rivers", 21)])]


def test_shard_arithmetic():
    assert S.parse_shard("2-of-4") == (2, 4)
    for bad in ("0-of-4", "5-of-4", "2of4", "a-of-b"):
        with pytest.raises(ValueError, match="I-of-N"):
            S.parse_shard(bad)
    for count in (0, 1, 7, 23, 100):
        for n in (1, 3, 4, 8):
            parts = [S.shard_slice(count, i, n) for i in range(1, n + 1)]
            sizes = [p.stop - p.start for p in parts]
            assert parts[0].start == 0 and parts[-1].stop == count and max(sizes) - min(sizes) <= 1
            assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The same documents chunked, embedded and BM25-tokenized as 1 job and as 4 shards."""
    from nanochat.data.chunking import main as chunk_main
    from nanochat.data.documents import write_jsonl
    from nanochat.retrieval.embeddings import main as embed_main
    root = tmp_path_factory.mktemp("shards")
    write_jsonl(root / "documents.jsonl", DOCS)
    one, four = root / "one", root / "four"
    chunk_main(["--input", str(root / "documents.jsonl"), "--output", str(one / "chunks.parquet"), "--chunk_tokens", "24",
                "--overlap", "4"])
    embed_main(["--chunks", str(one / "chunks.parquet"), "--output", str(one / "embeddings.npy"), "--precision", "fp32"])
    parts = []
    for i in range(1, 5):
        d = four / "shards" / f"{i}-of-4"
        chunk_main(["--input", str(root / "documents.jsonl"), "--output", str(d / "chunks.parquet"), "--chunk_tokens", "24",
                    "--overlap", "4", "--shard", f"{i}-of-4"])
        embed_main(["--chunks", str(d / "chunks.parquet"), "--output", str(d / "embeddings.npy"), "--precision", "fp32",
                    "--cache", str(root / "cache")])
        S.main(["bm25-tokens", "--chunks", str(d / "chunks.parquet"), "--output", str(d / "bm25_tokens.npz")])
        parts.append(d)
    S.main(["gather-chunks", "--inputs", *[str(d / "chunks.parquet") for d in parts], "--output", str(four / "chunks.parquet")])
    S.main(["gather-embeddings", "--inputs", *[str(d / "embeddings.npy") for d in parts], "--chunks",
            str(four / "chunks.parquet"), "--output", str(four / "embeddings.npy")])
    return root, one, four, [d / "bm25_tokens.npz" for d in parts]


def test_gathered_chunks_and_embeddings_equal_one_job(built):
    from nanochat.data.chunking import read_chunks
    _, one, four, _ = built
    a, b = read_chunks(one / "chunks.parquet"), read_chunks(four / "chunks.parquet")
    assert a.equals(b) and a.attrs == b.attrs and len(a) > 23  # several chunks per document
    assert (one / "chunks.parquet").read_bytes() == (four / "chunks.parquet").read_bytes()
    assert np.array_equal(np.load(one / "embeddings.npy"), np.load(four / "embeddings.npy"))
    assert (one / "embeddings.json").read_bytes() == (four / "embeddings.json").read_bytes()


def test_sharded_kb_has_the_same_kb_id_files_and_retrieval(built, tmp_path):
    from nanochat.retrieval import RetrievalManager
    from nanochat.retrieval.__main__ import main as kb_main
    from nanochat.retrieval.precompute import main as pre_main
    root, one, four, tokens = built
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    kbs = {}
    for name, src, extra in (("one", one, []), ("four", four, ["--bm25_tokens", *map(str, tokens)])):
        kb_main(["--chunks", str(src / "chunks.parquet"), "--embeddings", str(src / "embeddings.npy"),
                 "--output", str(tmp_path / name), "--type", "hybrid", *extra])
        kbs[name] = RetrievalManager("hybrid", knowledge_base_path=tmp_path / name).kb
    assert kbs["one"].kb_id == kbs["four"].kb_id
    files_one = {k: v["sha256"] for k, v in kbs["one"].manifest["files"].items()}
    files_four = {k: v["sha256"] for k, v in kbs["four"].manifest["files"].items()}
    assert files_one == files_four and any(k.startswith("bm25/") for k in files_one)  # BM25 from shard tokens: same files
    for kind in ("bm25", "dense", "hybrid"):
        outs = {}
        for name in ("one", "four"):
            pre_main(["--knowledge_base", str(tmp_path / name), "--retriever_type", kind, "--queries",
                      f"train={tmp_path / 'q.jsonl'}", f"test={tmp_path / 'q.jsonl'}", "--k_max", "5",
                      "--output", str(tmp_path / f"{name}_{kind}.parquet")])
            outs[name] = (tmp_path / f"{name}_{kind}.parquet").read_bytes()
        # the same table from 3 query blocks
        blocks = []
        for i in range(1, 4):
            out = tmp_path / f"{kind}_block{i}.parquet"
            pre_main(["--knowledge_base", str(tmp_path / "four"), "--retriever_type", kind, "--queries",
                      f"train={tmp_path / 'q.jsonl'}", f"test={tmp_path / 'q.jsonl'}", "--k_max", "5", "--block", f"{i}-of-3",
                      "--embedding_cache", str(root / "cache"), "--output", str(out)])
            blocks.append(str(out))
        pre_main(["--queries", f"train={tmp_path / 'q.jsonl'}", f"test={tmp_path / 'q.jsonl'}", "--gather", *blocks,
                  "--output", str(tmp_path / f"gathered_{kind}.parquet")])
        assert outs["one"] == outs["four"] == (tmp_path / f"gathered_{kind}.parquet").read_bytes(), kind
        meta = lambda n: {k: v for k, v in json.loads((tmp_path / f"{n}_{kind}.parquet.meta.json").read_text()).items()  # noqa: E731
                          if k not in ("kb_path", "seconds", "queries_per_second")}  # paths and wall clock aside
        assert meta("one") == meta("gathered") == meta("four")


def test_gathers_refuse_mismatched_shards(built, tmp_path):
    from nanochat.data.chunking import read_chunks
    _, one, four, tokens = built
    with pytest.raises(ValueError, match="appears in two shards"):
        S.gather_chunks([four / "shards/1-of-4/chunks.parquet"] * 2, tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="out of order"):
        S.read_bm25_tokens([tokens[1], tokens[0], tokens[2], tokens[3]], read_chunks(four / "chunks.parquet"))
    with pytest.raises(ValueError, match="tokenized with"):
        S.read_bm25_tokens(tokens, read_chunks(four / "chunks.parquet"), {"stemmer": None})
    with pytest.raises(ValueError, match="rows but"):
        S.gather_embeddings([four / "shards/1-of-4/embeddings.npy"], four / "chunks.parquet", tmp_path / "e.npy")
