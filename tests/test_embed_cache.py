"""Embedding cache: hits and misses, bit-identical to a full encode, damaged entries detected, concurrent writers.

    python -m pytest tests/test_embed_cache.py -q
"""
import multiprocessing as mp
import os

import numpy as np
import pytest

from nanochat.retrieval import embed_cache as C
from nanochat.retrieval.embeddings import encode_texts

TEXTS = [f"Passage {i}: the {w} migrates every {i % 7 + 2} years across the {p}."
         for i, (w, p) in enumerate([("tern", "arctic"), ("eel", "sargasso sea"), ("whale", "pacific"),
                                     ("salmon", "river delta"), ("monarch", "continent"), ("wildebeest", "serengeti"),
                                     ("crane", "himalaya"), ("turtle", "atlantic"), ("locust", "sahel")])]


def fake_cache(tmp_path, dim=4):
    return C.EmbeddingCache(tmp_path, "fake-model", "fp32", dim)


def unit_rows(n, dim=4, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_hits_misses_and_keys_by_embedder_and_precision(tmp_path):
    cache = fake_cache(tmp_path)
    keys, vecs = C.text_keys(["a", "b", "c"]), unit_rows(3)
    found, _ = cache.get(keys)
    assert not found.any()
    cache.put(keys[:2], vecs[:2])
    found, got = cache.get(C.text_keys(["b", "x", "a"]))
    assert found.tolist() == [True, False, True]
    np.testing.assert_array_equal(got[[0, 2]], vecs[[1, 0]])
    assert not got[1].any()
    # another precision or model is another cache: never mixed
    assert not C.EmbeddingCache(tmp_path, "fake-model", "int8", 4).get(keys)[0].any()
    assert not C.EmbeddingCache(tmp_path, "other-model", "fp32", 4).get(keys)[0].any()
    assert cache.stats()["rows"] == 2 and cache.stats()["damaged"] == 0


def test_damaged_row_and_truncated_pack_are_detected_not_used(tmp_path):
    cache = fake_cache(tmp_path)
    keys, vecs = C.text_keys(["a", "b", "c"]), unit_rows(3)
    pack = cache.put(keys, vecs)
    raw = bytearray(pack.read_bytes())
    raw[-3] ^= 0x40  # one bit of the last row's vector
    pack.write_bytes(bytes(raw))
    found, got = cache.get(keys)
    assert found.tolist() == [True, True, False]
    assert cache.corrupt == [(str(pack), 2)]
    assert cache.stats()["damaged"] == 1
    # a fresh copy of the row (what cached_encode writes after recomputing it) is used from then on
    cache.put(keys[2:], vecs[2:])
    found, got = cache.get(keys)
    assert found.all() and np.array_equal(got, vecs)
    # a truncated pack (a copy cut short) is reported and skipped
    pack.write_bytes(pack.read_bytes()[:100])
    found, _ = cache.get(keys)
    assert found.tolist() == [False, False, True] and cache.corrupt[0] == (str(pack), -1)
    stats = cache.compact()
    assert stats["packs"] == 1 and stats["rows"] == 1 and stats["damaged"] == 0


def _writer(root, seed, start):
    cache = C.EmbeddingCache(root, "fake-model", "fp32", 4)
    names = [f"t{i}" for i in range(start, start + 300)]
    for j in range(0, 300, 50):  # many small packs, racing the other writers
        cache.put(C.text_keys(names[j:j + 50]), unit_rows(50, seed=hash((seed, j)) % 2**31))


def test_concurrent_writers_leave_only_whole_packs(tmp_path):
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(tmp_path, s, s * 150)) for s in range(4)]  # overlapping key ranges
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    cache = fake_cache(tmp_path)
    found, got = cache.get(C.text_keys([f"t{i}" for i in range(750)]))
    assert found.all() and np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    stats = cache.stats()
    assert stats["damaged"] == 0 and stats["distinct"] == 750 and stats["packs"] == 24
    assert not [p for p in os.listdir(cache.dir) if p.startswith(".")]  # no temp file left behind


def test_cached_encode_equals_a_full_encode_bit_for_bit(tmp_path):
    full = encode_texts(TEXTS, precision="fp32", show_progress=False)
    first, s1 = C.cached_encode(TEXTS[:5], "all-MiniLM-L6-v2", tmp_path, precision="fp32", show_progress=False)
    assert s1["hits"] == 0 and s1["computed"] == 5
    edited = TEXTS[:4] + ["Passage 4: an edited text about monarch butterflies."] + TEXTS[5:] + [TEXTS[0]]
    again, s2 = C.cached_encode(edited, "all-MiniLM-L6-v2", tmp_path, precision="fp32", show_progress=False)
    assert s2["hits"] == 5 and s2["computed"] == 5  # 4 kept + the duplicate of TEXTS[0]; edited one and 4 new ones
    fresh = encode_texts(edited, precision="fp32", show_progress=False)
    assert np.array_equal(again, fresh)  # cache + new rows == a full rebuild, bit for bit
    assert np.array_equal(again[:4], full[:4]) and np.array_equal(again[5:9], full[5:9])


def test_embeddings_cli_with_cache(tmp_path):
    import json

    import pandas as pd
    from nanochat.retrieval.embeddings import main
    chunks = pd.DataFrame({"id": [f"d{i}#0" for i in range(len(TEXTS))], "title": "", "content": TEXTS})
    chunks.to_parquet(tmp_path / "chunks.parquet")
    main(["--chunks", str(tmp_path / "chunks.parquet"), "--output", str(tmp_path / "a.npy"),
          "--cache", str(tmp_path / "cache"), "--precision", "fp32"])
    main(["--chunks", str(tmp_path / "chunks.parquet"), "--output", str(tmp_path / "b.npy"),
          "--cache", str(tmp_path / "cache"), "--precision", "fp32"])
    main(["--chunks", str(tmp_path / "chunks.parquet"), "--output", str(tmp_path / "c.npy"), "--precision", "fp32"])
    a, b, c = (np.load(tmp_path / f"{x}.npy") for x in "abc")
    assert np.array_equal(a, b) and np.array_equal(a, c)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "c.json").read_bytes()  # sidecar: no cache trace
    assert json.loads((tmp_path / "a.json").read_text())["rows"] == len(TEXTS)
    assert C.main(["--cache", str(tmp_path / "cache")]) == 0


@pytest.mark.parametrize("lengths,bs", [([5, 3, 5, 5, 3, 9], 2), ([4] * 7, 3)])
def test_same_length_batches(lengths, bs):
    from nanochat.retrieval.embeddings import same_length_batches
    batches = same_length_batches(np.array(lengths), bs)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= bs and len({lengths[i] for i in b}) == 1
    assert lengths[batches[0][0]] == max(lengths)  # longest first
