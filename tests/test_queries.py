"""Query file validation. Run: python -m pytest -q tests/test_queries.py"""
import json

import pytest

from nanochat.data.queries import QueryFileError, load_queries


def _write(tmp_path, lines):
    p = tmp_path / "q.jsonl"
    p.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n", encoding="utf-8")
    return p


def test_loads_and_normalises_aliases(tmp_path):
    p = _write(tmp_path, [{"id": "q1", "question": " When? ", "answers": ["1987"], "doc_ids": ["d1", "d2"]},
                          {"id": 7, "query": "Who?", "answer": "Talo"}, ""])
    rows = load_queries(p)
    assert rows[0] == {"id": "q1", "question": "When?", "answers": ["1987"], "doc_ids": ["d1", "d2"], "hops": 2}
    assert rows[1]["id"] == "7" and rows[1]["question"] == "Who?" and rows[1]["answers"] == ["Talo"]
    assert rows[1]["doc_ids"] == [] and rows[1]["hops"] == 1


@pytest.mark.parametrize("record, expected", [
    ('{"id": "a", "question": "x"', "2: json: invalid JSON"),
    ({"id": "b"}, "2: question: missing"),
    ({"id": "c", "question": "   "}, "2: question: empty"),
    ({"id": "d", "question": 5}, "2: question: expected a string"),
    ({"id": "e", "question": "q", "answers": "x", "doc_ids": "d1"}, "2: doc_ids: expected a list of strings"),
    ({"id": "f", "question": "q", "answers": [1]}, "2: answers: expected a list of strings"),
    ({"id": "g", "question": "q", "hops": 0}, "2: hops: expected a positive integer"),
    ({"question": "q"}, "2: id: missing"),
    ({"id": "ok", "question": "dup"}, "2: id: duplicate id 'ok'"),
])
def test_errors_name_file_line_field(tmp_path, record, expected):
    p = _write(tmp_path, [{"id": "ok", "question": "fine"}, record])
    with pytest.raises(QueryFileError) as e:
        load_queries(p)
    assert f"{p}:{expected}" in str(e.value)


def test_all_problems_reported_and_missing_file(tmp_path):
    p = _write(tmp_path, ["not json", {"id": "x"}, {"id": "y", "question": "ok"}])
    with pytest.raises(QueryFileError, match="2 problem"):
        load_queries(p)
    with pytest.raises(FileNotFoundError, match="query file not found"):
        load_queries(tmp_path / "missing.jsonl")


def test_squad_converter_splits_by_article(shared_data, tmp_path):
    """nanochat.data.sources.squad on the shared dev subset: every question kept, article-disjoint splits, loadable files."""
    from nanochat.data.sources.squad import main as squad_main
    assert squad_main(["--input", str(shared_data / "squad" / "dev.json"), "--output", str(tmp_path)]) == 0
    docs = [json.loads(l) for l in open(tmp_path / "documents.jsonl", encoding="utf-8")]
    assert len(docs) == 71
    splits = {s: load_queries(tmp_path / f"queries_{s}.jsonl") for s in ("train", "val", "test")}
    assert sum(len(r) for r in splits.values()) == 335 and all(splits.values())
    title = {d["id"]: d["title"] for d in docs}
    content = {d["id"]: d["content"] for d in docs}
    articles = {s: {title[q["doc_ids"][0]] for q in rows} for s, rows in splits.items()}
    assert not articles["train"] & (articles["val"] | articles["test"]) and not articles["val"] & articles["test"]
    assert all(q["answers"][0] in content[q["doc_ids"][0]] for rows in splits.values() for q in rows)
