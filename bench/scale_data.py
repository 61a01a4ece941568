"""A large KB synthesised by perturbing SciFact, for the scale benchmarks (bench/large_index.py, bench/incremental_kb.py).

Passage j < 5,183 is SciFact abstract j (title + abstract, as nanochat.retrieval.evaluate indexes it). Every later passage is a perturbed excerpt: a window
of 3-6 consecutive sentences of a base abstract `a`, with one sentence of another abstract `b` spliced in at
a random place, under a's title. Its doc_id is a's, so SciFact's qrels still score it. The recipe (a, b,
window, splice) is drawn from one seeded stream in order, so the first N passages of a 1M-passage KB are the
N-passage KB.

Embeddings of the 1M KB cannot be computed here (~6 passages/s on 2 shared cores: about two days), so the index
benchmark gives each passage a stand-in vector built from real MiniLM vectors of its parts:
normalise(e_a + beta * e_b + sigma * noise), with beta and sigma fitted so that cos(v, e_a) and cos(v, e_b)
have the means measured on the real embeddings of the first passages (`fit_fake`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

DATA = Path("/work/shared/data/scifact")
N_BASE = 5183
DIM = 384


def load_base():
    """SciFact's abstracts as (ids, titles, texts, sentence lists)."""
    from nanochat.data.chunking import split_sentences
    from nanochat.data.sources.beir import load_corpus
    docs = load_corpus(DATA / "corpus.jsonl")
    return ([d["id"] for d in docs], [d["title"] for d in docs], [d["content"] for d in docs],
            [split_sentences(d["content"]) or [d["content"]] for d in docs])


def recipes(n: int, n_sentences: np.ndarray, seed: int = 0) -> dict:
    """Arrays (length n) describing each passage: base a, other b, window start/length in a, splice position."""
    rng = np.random.default_rng(seed)
    extra = max(0, n - N_BASE)
    a = np.concatenate([np.arange(min(n, N_BASE)), rng.integers(0, N_BASE, extra)])
    b = np.concatenate([np.full(min(n, N_BASE), -1), rng.integers(0, N_BASE, extra)])
    u = rng.random((extra, 3))
    lens = n_sentences[a[N_BASE:]] if extra else np.zeros(0, dtype=np.int64)
    length = np.minimum(lens, 3 + (u[:, 0] * 4).astype(np.int64))
    start = (u[:, 1] * (lens - length + 1)).astype(np.int64)
    splice = (u[:, 2] * (length + 1)).astype(np.int64)
    pad = np.zeros(min(n, N_BASE), dtype=np.int64)
    return {"a": a, "b": b, "start": np.concatenate([pad, start]), "length": np.concatenate([pad, length]),
            "splice": np.concatenate([pad, splice])}


def passages(n: int, seed: int = 0, base=None):
    """The first n passages as a chunks DataFrame (id "<doc>~<j>#0", doc_id = base abstract's id)."""
    import pandas as pd
    ids, titles, texts, sents = base or load_base()
    r = recipes(n, np.array([len(s) for s in sents]), seed)
    rows_id, rows_doc, rows_title, rows_text = [], [], [], []
    for j in range(n):
        a = int(r["a"][j])
        if j < N_BASE:
            text = texts[a]  # the abstract as SciFact has it: its vector is the one retrieval_eval's KB uses
        else:
            window = list(sents[a][r["start"][j]:r["start"][j] + r["length"][j]])
            other = sents[int(r["b"][j])]
            window.insert(int(r["splice"][j]), other[j % len(other)])
            text = " ".join(window)
        rows_id.append(f"{ids[a]}~{j}#0")
        rows_doc.append(ids[a])
        rows_title.append(titles[a])
        rows_text.append(text)
    return pd.DataFrame({"id": rows_id, "doc_id": rows_doc, "chunk_index": 0, "title": rows_title,
                         "content": rows_text, "source": None, "metadata": "{}"})


def queries():
    """SciFact queries with qrels (train split): (ids, texts, {qid: {doc_id: rel}})."""
    from nanochat.data.sources.beir import load_qrels, load_queries
    q = load_queries(DATA / "queries.jsonl")
    qrels = load_qrels(DATA / "qrels" / "train.tsv")
    qids = [k for k in qrels if k in q]
    return qids, [q[k] for k in qids], qrels


def fit_fake(real: np.ndarray, base_vecs: np.ndarray, rec: dict, first: int = N_BASE, seed: int = 0):
    """beta, sigma such that stand-in vectors match the real ones' mean cosine to their two sources."""
    rows = np.arange(first, len(real))
    a, b = rec["a"][rows], rec["b"][rows]
    target_a = float(np.mean(np.sum(real[rows] * base_vecs[a], axis=1)))
    target_b = float(np.mean(np.sum(real[rows] * base_vecs[b], axis=1)))
    best = None
    for beta in np.linspace(0.0, 0.8, 17):
        for sigma in np.linspace(0.0, 0.06, 25):
            v = fake_vectors(base_vecs, {"a": a, "b": b}, beta, sigma, seed)
            ca, cb = float(np.mean(np.sum(v * base_vecs[a], 1))), float(np.mean(np.sum(v * base_vecs[b], 1)))
            err = (ca - target_a) ** 2 + (cb - target_b) ** 2
            if best is None or err < best[0]:
                best = (err, float(beta), float(sigma), ca, cb)
    _, beta, sigma, ca, cb = best
    return {"beta": beta, "sigma": sigma, "real_cos_a": target_a, "real_cos_b": target_b, "fake_cos_a": ca, "fake_cos_b": cb}


def fake_vectors(base_vecs: np.ndarray, rec: dict, beta: float, sigma: float, seed: int = 0, out=None, block=65_536):
    """normalise(e_a + beta e_b + sigma noise) for each recipe row (originals, b = -1, are e_a itself)."""
    n = len(rec["a"])
    out = np.empty((n, base_vecs.shape[1]), dtype=np.float32) if out is None else out
    rng = np.random.default_rng(seed + 1)
    for s in range(0, n, block):
        a, b = rec["a"][s:s + block], rec["b"][s:s + block]
        v = base_vecs[a].copy()
        mix = b >= 0
        v[mix] += beta * base_vecs[b[mix]] + sigma * rng.standard_normal((int(mix.sum()), v.shape[1]), dtype=np.float32)
        out[s:s + len(v)] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out
