"""Synthetic world: determinism, split disjointness, answers in gold docs. Run: python -m pytest -q tests/test_synthetic.py"""
import json
from pathlib import Path

import pytest
import yaml

from nanochat.data.leakage import check_leakage
from nanochat.data.queries import load_queries
from nanochat.data.synthetic import generate_world, main


def _read(path):
    return [json.loads(l) for l in open(path, encoding="utf-8")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    manifest = generate_world(d, seed=3, n_entities=200)
    return d, manifest


def test_deterministic_per_seed(world, tmp_path):
    d, manifest = world
    again = generate_world(tmp_path / "again", seed=3, n_entities=200)
    assert again["sha256"] == manifest["sha256"]
    other = generate_world(tmp_path / "other", seed=4, n_entities=200)
    assert other["sha256"]["documents.jsonl"] != manifest["sha256"]["documents.jsonl"]


def test_files_validate_and_sizes(world):
    d, manifest = world
    docs = _read(d / "documents.jsonl")
    assert len(docs) == manifest["n_documents"] == 200
    words = [len(x["content"].split()) for x in docs]
    assert 25 <= min(words) and max(words) <= 90
    for split in ("train", "val", "test"):
        rows = load_queries(d / f"queries_{split}.jsonl")
        assert len(rows) == manifest["n_queries"][split] > 0
        assert {r["hops"] for r in rows} == {1, 2}
    assert manifest["n_queries"]["train"] > 4 * manifest["n_queries"]["test"]


def test_answers_literally_in_last_gold_doc(world):
    d, _ = world
    docs = {x["id"]: x["content"] for x in _read(d / "documents.jsonl")}
    for split in ("train", "val", "test"):
        for q in _read(d / f"queries_{split}.jsonl"):
            assert all(g in docs for g in q["doc_ids"]) and len(q["doc_ids"]) == q["hops"]
            assert q["answers"][0] in docs[q["doc_ids"][-1]], q
            assert q["entity"] in docs[q["doc_ids"][0]]


def test_heldout_entities_never_in_training(world):
    d, _ = world
    train = _read(d / "queries_train.jsonl")
    train_text = " ".join(q["question"] + " " + q["answers"][0] for q in train)
    train_docs = {g for q in train for g in q["doc_ids"]}
    for split in ("val", "test"):
        for q in _read(d / f"queries_{split}.jsonl"):
            assert q["entity"] not in train_text
            assert not set(q["doc_ids"]) & train_docs
            if not q["answers"][0].isdigit() and q["template"] not in ("person_job", "product_colour", "city_landmark"):
                assert q["answers"][0] not in train_text  # named-entity answers are split-local
    report = check_leakage(d / "queries_train.jsonl", {"val": d / "queries_val.jsonl", "test": d / "queries_test.jsonl"})
    assert report["passed"] and report["leak_rate"] == 0.0


def test_cli(tmp_path):
    assert main(["--output", str(tmp_path), "--seed", "1", "--n_entities", "60", "--two_hop", "false"]) == 0
    assert all(q["hops"] == 1 for q in _read(tmp_path / "queries_train.jsonl"))
    with pytest.raises(ValueError, match="too small"):
        generate_world(tmp_path / "x", n_entities=5)


@pytest.mark.parametrize("config", ["config/config.yaml", "config/second_world.yaml"])
def test_each_configured_world_is_clean(config, tmp_path):
    """The worlds the configs generate (the default one and the second, "music") pass the workflow's leakage
    check at 0.0, and every answer is read from the question's last gold document."""
    root = Path(__file__).resolve().parents[1]
    settings = {**yaml.safe_load((root / "config/config.yaml").read_text())["synthetic"],
                **yaml.safe_load((root / config).read_text())["synthetic"]}
    generate_world(tmp_path, seed=settings["seed"], n_entities=settings["n_entities"],
                   world=settings.get("world", "companies"))
    docs = {x["id"]: x["content"] for x in _read(tmp_path / "documents.jsonl")}
    for split in ("train", "val", "test"):
        for q in _read(tmp_path / f"queries_{split}.jsonl"):
            assert q["answers"][0] in docs[q["doc_ids"][-1]], q
    report = check_leakage(tmp_path / "queries_train.jsonl",
                           {"val": tmp_path / "queries_val.jsonl", "test": tmp_path / "queries_test.jsonl"})
    assert report["passed"] and report["leak_rate"] == 0.0, report
