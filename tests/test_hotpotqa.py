"""HotpotQA converter: pooled paragraphs as documents, supporting titles as gold doc_ids, clear errors."""
import json

import pytest

from nanochat.data.sources.hotpotqa import convert_hotpotqa, doc_id_for, read_hotpotqa
from nanochat.data.queries import load_queries


def rec(qid, question, answer, support, ctx):
    return {"id": qid, "question": question, "answer": answer, "type": "bridge", "level": "hard",
            "supporting_facts": {"title": support, "sent_id": [0] * len(support)},
            "context": {"title": [t for t, _ in ctx], "sentences": [s for _, s in ctx]}}


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_convert_pools_paragraphs_and_maps_gold(tmp_path):
    a = ("Acme Labs", ["Acme Labs was founded by Vora Delm.", " It is in Quix."])
    b = ("Vora Delm", ["Vora Delm was born in Zentil."])
    dup = ("Vora Delm (pilot)", ["Vora Delm was born in Zentil."])  # same text, other title
    c = ("Quix", ["Quix is a town."])
    src = write(tmp_path / "dev.jsonl", [
        rec("q1", "Where was the founder of Acme Labs born?", "Zentil", ["Acme Labs", "Vora Delm", "Acme Labs"], [a, b, c]),
        rec("q2", "Who was born in Zentil?", "Vora Delm", ["Vora Delm (pilot)", "Quix"], [dup, c, a]),
    ])
    m = convert_hotpotqa(src, tmp_path / "out", fractions=(0.5, 0.25, 0.25))
    docs = [json.loads(l) for l in (tmp_path / "out/documents.jsonl").read_text().splitlines()]
    assert m["n_documents"] == len(docs) == 3  # pooled, deduplicated (the duplicate text is one document)
    acme = next(d for d in docs if d["title"] == "Acme Labs")
    assert acme["content"] == "Acme Labs was founded by Vora Delm. It is in Quix." and acme["id"] == doc_id_for("Acme Labs")
    qs = {q["id"]: q for q in load_queries(tmp_path / "out/queries_all.jsonl")}
    assert qs["q1"]["doc_ids"] == [doc_id_for("Acme Labs"), doc_id_for("Vora Delm")] and qs["q1"]["hops"] == 2
    assert qs["q2"]["doc_ids"] == [doc_id_for("Vora Delm"), doc_id_for("Quix")]  # alias to the kept paragraph
    assert qs["q1"]["answers"] == ["Zentil"]
    n = sum(len(load_queries(tmp_path / f"out/queries_{s}.jsonl")) if (tmp_path / f"out/queries_{s}.jsonl").stat().st_size else 0
            for s in ("train", "val", "test"))
    assert n == 2


def test_errors_name_file_line_and_field(tmp_path):
    bad = rec("q1", "Q?", "A", ["Missing Title"], [("T", ["x."])])
    src = write(tmp_path / "dev.jsonl", [rec("q0", "Q?", "A", ["T"], [("T", ["x."])]), bad])
    with pytest.raises(ValueError, match=r"dev.jsonl:2: supporting_facts: title\(s\) \['Missing Title'\]"):
        read_hotpotqa(src)
    (tmp_path / "b.jsonl").write_text('{"id": "q", "question": "x"}\n')
    with pytest.raises(ValueError, match=r"b.jsonl:1: supporting_facts: missing"):
        read_hotpotqa(tmp_path / "b.jsonl")
    with pytest.raises(FileNotFoundError):
        read_hotpotqa(tmp_path / "nope.jsonl")


def test_shared_dev_subset(shared_data, tmp_path):
    m = convert_hotpotqa(shared_data / "hotpotqa/dev.jsonl", tmp_path / "hp")
    assert sum(m["n_queries"].values()) == 355 and m["n_documents"] > 3000
    ids = {json.loads(l)["id"] for l in (tmp_path / "hp/documents.jsonl").read_text().splitlines()}
    qs = load_queries(tmp_path / "hp/queries_all.jsonl")
    assert all(len(q["doc_ids"]) == 2 and set(q["doc_ids"]) <= ids for q in qs)
