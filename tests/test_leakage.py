"""Leakage detector on planted leaks. Run: python -m pytest -q tests/test_leakage.py"""
import json

import pytest

from nanochat.data.leakage import LeakageError, check_leakage, find_leaks, main

TRAIN = [
    {"id": "t1", "question": "When was Zorvik Labs founded?", "answers": ["1987"], "doc_ids": ["d1"]},
    {"id": "t2", "question": "Where was Talo Vexmir born?", "answers": ["Belport"], "doc_ids": ["d2"]},
    {"id": "t3", "question": "What colour is the Quax lamp?", "answers": ["red"], "doc_ids": ["d3"]},
]


def _q(qid, question, answer, doc_ids=()):
    return {"id": qid, "question": question, "answers": [answer], "doc_ids": list(doc_ids)}


def test_planted_leaks_each_kind():
    held = [
        _q("h1", "When was Zorvik Labs founded?", "1987"),                      # exact
        _q("h2", "when was ZORVIK labs founded ", "1987"),                      # normalised
        _q("h3", "In which city was Talo Vexmir born?", "Belport", ["d9"]),       # same entity string + answer
        _q("h4", "Which lamp is red?", "red", ["d3"]),                           # same gold doc + answer
        _q("h5", "Where was Mira Donn born?", "Belport", ["d7"]),                # same answer, other entity: clean
        _q("h6", "When was Zorvik Labs renamed?", "2001", ["d8"]),               # same entity, other answer: clean
        # a question opening with a preposition: "Along" names nothing, so other towns on the same river are clean
        _q("h7", "Along which river is Dovjul?", "Sela", ["d10"]),
    ]
    r = find_leaks([*(dict(t, hops=1) for t in TRAIN), _q("t4", "Along which river is Ashsia?", "Sela", ["d11"])],
                   held)
    assert r["counts"] == {"exact": 1, "normalized": 1, "answer_same_entity": 2}
    assert r["n_leaked"] == 4 and r["leak_rate"] == pytest.approx(4 / 7)
    assert {e["heldout_id"] for e in r["examples"]["answer_same_entity"]} == {"h3", "h4"}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_threshold_and_cli_exit_codes(tmp_path):
    tr = _write(tmp_path / "train.jsonl", TRAIN)
    clean = _write(tmp_path / "val.jsonl", [_q("v1", "Where was Mira Donn born?", "Kelport", ["d7"])])
    leaky = _write(tmp_path / "test.jsonl", [_q("x1", "When was Zorvik Labs founded?", "1987"),
                                             _q("x2", "Where was Mira Donn born?", "Kelport", ["d7"])])
    assert main(["--train", str(tr), "--heldout", f"val={clean}", "--output", str(tmp_path / "ok.json")]) == 0
    assert json.loads((tmp_path / "ok.json").read_text())["passed"] is True
    out = tmp_path / "bad.json"
    assert main(["--train", str(tr), "--heldout", f"val={clean}", f"test={leaky}", "--output", str(out)]) == 1
    rep = json.loads(out.read_text())
    assert rep["splits"]["test"]["counts"]["exact"] == 1 and rep["leak_rate"] == 0.5 and not rep["passed"]
    with pytest.raises(LeakageError, match="exceeds"):
        check_leakage(tr, {"test": leaky}, max_leak_rate=0.4)
    assert check_leakage(tr, {"test": leaky}, max_leak_rate=0.5)["passed"]
