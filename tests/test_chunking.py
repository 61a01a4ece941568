"""Chunking invariants: coverage, overlap bounds, sentence ends, stable ids, short docs whole, determinism.

Run: python -m pytest -q tests/test_chunking.py
"""
import random

import pandas as pd
import pytest

from nanochat.data.chunking import TOKEN_RE, chunk_documents, chunk_spans, count_tokens, main, read_chunks


def make_text(n_sentences, seed=0):
    rng = random.Random(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    sents = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 15))).capitalize() + rng.choice(".!?")
             for _ in range(n_sentences)]
    return " ".join(sents)


def token_ids_covered(text, spans):
    toks = [m.span() for m in TOKEN_RE.finditer(text)]
    return [[i for i, (s, e) in enumerate(toks) if s >= a and e <= b] for a, b in spans]


def test_tokenizer_counts_words_and_punctuation():
    assert count_tokens("Refunds take 5-7 days.") == 7  # Refunds take 5 - 7 days .


@pytest.mark.parametrize("chunk_tokens, overlap", [(20, 0), (20, 5), (64, 16), (7, 6)])
def test_coverage_budget_and_overlap(chunk_tokens, overlap):
    text = make_text(40)
    spans = chunk_spans(text, chunk_tokens, overlap)
    covered = token_ids_covered(text, spans)
    n_tokens = count_tokens(text)
    assert sorted(set(i for c in covered for i in c)) == list(range(n_tokens))  # every token in some chunk
    for c in covered:
        assert 0 < len(c) <= chunk_tokens and c == list(range(c[0], c[-1] + 1))
    for prev, nxt in zip(covered, covered[1:]):
        shared = len(set(prev) & set(nxt))
        assert shared <= overlap and nxt[0] > prev[0]
        if overlap:
            assert shared >= 1, "consecutive chunks must overlap when overlap > 0"
        else:
            assert nxt[0] == prev[-1] + 1


def test_chunks_end_at_sentence_boundaries_when_possible():
    text = make_text(30, seed=3)
    for s, e in chunk_spans(text, 40, 8)[:-1]:
        assert text[e - 1] in ".!?", text[s:e]


def test_long_sentence_is_split_by_words():
    text = " ".join(f"w{i}" for i in range(100)) + "."
    spans = chunk_spans(text, 30, 0)
    assert len(spans) == 4 and all(count_tokens(text[s:e]) <= 30 for s, e in spans)


def test_short_document_stays_whole_and_ids_are_stable():
    docs = [{"id": "a", "title": "A", "content": "  Short text.  ", "source": "s", "metadata": {"k": 1}},
            {"id": "b", "title": "B", "content": make_text(50), "source": None, "metadata": {}}]
    rows = chunk_documents(docs, chunk_tokens=32, overlap=4)
    assert rows[0]["id"] == "a#0" and rows[0]["content"] == "Short text." and rows[0]["metadata"] == {"k": 1}
    assert (rows[0]["char_start"], rows[0]["char_end"]) == (2, 13)
    b = [r for r in rows if r["doc_id"] == "b"]
    assert [r["id"] for r in b] == [f"b#{k}" for k in range(len(b))] and len(b) > 3
    assert all(r["title"] == "B" and r["chunk_index"] == k for k, r in enumerate(b))
    assert all(docs[1]["content"][r["char_start"]:r["char_end"]] == r["content"] for r in b)
    assert chunk_documents(docs, 32, 4) == rows  # deterministic


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="overlap"):
        chunk_spans("a b c", 4, 4)
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunk_spans("a b c", 0, 0)


def test_cli_writes_parquet(tmp_path):
    src = tmp_path / "valid.jsonl"
    pd.DataFrame([{"id": "d1", "title": "T", "content": make_text(30), "metadata": {"lang": "en"}}]).to_json(src, orient="records", lines=True)
    out = tmp_path / "chunks.parquet"
    assert main(["--input", str(src), "--output", str(out), "--chunk_tokens", "50", "--overlap", "10"]) == 0
    df = read_chunks(out)
    assert df["id"].tolist()[0] == "d1#0" and len(df) > 2 and df["metadata"].iloc[0] == '{"lang": "en"}'
