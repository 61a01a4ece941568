"""Document validation: one tiny fixture per error class, lenient quarantine, folder input, CLI.

Run: python -m pytest -q tests/test_documents.py
"""
import json
from pathlib import Path

import pytest

from nanochat.data.documents import (DocumentValidationError, documents_from_folder, load_documents, main,
                                validate_jsonl)

DATA = Path(__file__).parent / "data"


def problems(name):
    return validate_jsonl(DATA / name).problems


def test_valid_file_loads_with_all_fields():
    docs = load_documents(DATA / "docs_valid.jsonl")
    assert [d["id"] for d in docs] == ["sky", "bread", "tides"]
    assert docs[0]["metadata"] == {"topic": "optics"} and docs[0]["source"] == "physics.txt"
    assert docs[1]["source"] is None and docs[1]["metadata"] == {}


@pytest.mark.parametrize("name, expected", [
    ("docs_invalid_json.jsonl", [":2: json: invalid JSON"]),
    ("docs_not_object.jsonl", [":2: record: expected a JSON object, got list"]),
    ("docs_wrong_type.jsonl", [":2: id: expected a string, got int", ":3: title: expected a string, got list",
                               ":3: metadata: expected an object or null, got str"]),
    ("docs_missing_field.jsonl", [":2: id: missing", ":3: content: missing", ":4: id: empty", ":5: content: empty"]),
    ("docs_duplicate_id.jsonl", [":2: id: duplicate id 'sky' (first seen at", "docs_duplicate_id.jsonl:1)"]),
    ("docs_duplicate_content.jsonl", [":2: content: duplicate content (same text as", "docs_duplicate_content.jsonl:1)"]),
    ("docs_bad_utf8.jsonl", [":2: line: invalid UTF-8 at byte"]),
    ("docs_control_chars.jsonl", [":2: content: control character(s) U+0007"]),
])
def test_each_error_class_names_file_line_field(name, expected):
    found = problems(name)
    text = "\n".join(found)
    for piece in expected:
        assert piece in text, f"{piece!r} not in:\n{text}"
    assert all(p.startswith(str(DATA / name) + ":") for p in found)
    with pytest.raises(DocumentValidationError) as e:
        load_documents(DATA / name, mode="strict")
    assert expected[0] in str(e.value)


def test_strict_lists_problems_up_to_limit_then_counts(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join("{nope\n" for _ in range(7)))
    with pytest.raises(DocumentValidationError) as e:
        load_documents(bad, max_errors=3)
    msg = str(e.value)
    assert "7 problem(s)" in msg and "... and 4 more" in msg and f"{bad}:3: json" in msg and f"{bad}:4:" not in msg
    assert len(e.value.problems) == 7


def test_lenient_quarantines_bad_lines_verbatim(tmp_path, capsys):
    rejected = tmp_path / "rejected.jsonl"
    docs = load_documents(DATA / "docs_missing_field.jsonl", mode="lenient", rejected_path=rejected)
    assert [d["id"] for d in docs] == ["sky"]
    rows = [json.loads(line) for line in rejected.read_text().splitlines()]
    src = (DATA / "docs_missing_field.jsonl").read_text().splitlines()
    assert [r["line"] for r in rows] == [2, 3, 4, 5]
    assert [r["raw"] for r in rows] == src[1:5]          # kept verbatim
    assert "id: missing" in rows[0]["reasons"][0]
    assert "1 valid documents, 4 rejected" in capsys.readouterr().err


def test_lenient_keeps_first_duplicate_and_bad_utf8_raw(tmp_path):
    rejected = tmp_path / "r.jsonl"
    docs = load_documents(DATA / "docs_bad_utf8.jsonl", mode="lenient", rejected_path=rejected)
    assert [d["id"] for d in docs] == ["sky"]
    row = json.loads(rejected.read_text())
    assert row["line"] == 2 and "caf\\xe9" in row["raw"]


def test_missing_title_defaults_to_id_with_warning(capsys):
    docs = load_documents(DATA / "docs_no_title.jsonl")
    assert docs[0]["title"] == "untitled"
    assert "title: missing, using the id" in capsys.readouterr().err


def test_c1_control_characters_warn_but_are_kept(tmp_path, capsys):
    p = tmp_path / "c1.jsonl"
    p.write_text(json.dumps({"id": "c1", "title": "T", "content": "pages 10\u009612"}) + "\n")
    assert load_documents(p)[0]["content"] == "pages 10\u009612"
    assert "C1 control character(s) U+0096" in capsys.readouterr().err


def test_long_document_warns_but_is_kept(tmp_path, capsys):
    p = tmp_path / "long.jsonl"
    p.write_text(json.dumps({"id": "long", "title": "L", "content": "word " * 2100}) + "\n")
    assert len(load_documents(p)) == 1
    assert "2100 words (> 2000)" in capsys.readouterr().err


def test_all_invalid_is_an_error_even_in_lenient(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text("[1]\n")
    with pytest.raises(DocumentValidationError):
        load_documents(p, mode="lenient")


def test_folder_of_markdown_and_text(tmp_path):
    (tmp_path / "guides").mkdir()
    (tmp_path / "guides" / "setup.md").write_text("Intro line\n# Installing the app\nRun the installer.\n")
    (tmp_path / "notes.txt").write_text("Plain text note about refunds.\n")
    (tmp_path / "skip.json").write_text("{}")
    raw = documents_from_folder(tmp_path)
    assert [(d["id"], d["title"]) for d in raw] == [("guides/setup.md", "Installing the app"), ("notes.txt", "notes")]
    assert len(load_documents(tmp_path)) == 2


def test_cli_writes_valid_and_rejected(tmp_path):
    out, rej = tmp_path / "valid.jsonl", tmp_path / "rej.jsonl"
    assert main(["--input", str(DATA / "docs_duplicate_id.jsonl"), "--output", str(out), "--rejected", str(rej)]) == 1
    assert not out.exists()
    assert main(["--input", str(DATA / "docs_duplicate_id.jsonl"), "--output", str(out), "--rejected", str(rej),
                 "--mode", "lenient"]) == 0
    assert len(out.read_text().splitlines()) == 1 and len(rej.read_text().splitlines()) == 1
