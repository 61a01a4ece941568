"""nanochat.rag.evaluation / scripts.rag_eval: scoring rules, the three conditions, outputs of a tiny run.

    python -m pytest -q tests/test_rag_eval.py
"""
import csv
import json
import math

import pytest

from nanochat.rag import evaluation as E
from tests.test_rag_finetune import make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = make_world(tmp_path_factory.mktemp("rageval"))
    from scripts.rag_finetune import main
    main(["--knowledge_base", str(w["kb"]), "--source", "base", "--model_tag", "t2", "--output_tag", "tiny",
          "--dataset", str(w["data"] / "dataset"), "--top_k", "2", "--max_seq_len", "256", "--max_doc_length", "40",
          "--device_batch_size", "4", "--max_steps", "2", "--eval_every", "-1", "--eval_examples", "4",
          "--device", "cpu", "--num_threads", "1", "--base_tasks", "none", "--base_dir", str(w["base"])])
    return w


def test_retrieval_scores_document_level():
    # chunks of the same document count once; gold d2 at document rank 2
    recall, ndcg = E.retrieval_scores(["d1", "d1", "d2", "d3"], ["d2"], k=2)
    assert recall == 1.0 and ndcg == pytest.approx(1 / math.log2(3))
    recall, _ = E.retrieval_scores(["d1", "d3"], ["d2", "d3"], k=1)
    assert recall == 0.0
    assert math.isnan(E.retrieval_scores(["d1"], [], 3)[0])


def test_score_answer_citations_unsupported_and_abstention():
    item = {"answers": ["Paris"], "doc_ids": ["d2"]}
    docs = [{"id": "d1#0", "doc_id": "d1", "title": "A", "content": "Rome is big."},
            {"id": "d2#0", "doc_id": "d2", "title": "B", "content": "The capital is Paris."}]
    s = E.score_answer("Paris [2]", item, docs)
    assert s["em"] == 1.0 and s["citation_precision"] == 1.0 and s["citation_recall"] == 1.0
    assert s["unsupported"] == 0.0 and s["gold_present"] == 1.0
    s = E.score_answer("Lyon [1]", item, docs)
    assert s["em"] == 0.0 and s["citation_precision"] == 0.0 and s["unsupported"] == 1.0
    from nanochat.rag.metrics import ABSTAIN_ANSWER
    s = E.score_answer(ABSTAIN_ANSWER, item, docs[:1])
    assert s["abstained"] == 1.0 and s["gold_present"] == 0.0 and s["unsupported"] == 0.0


def test_conditions_and_aggregate_with_a_scripted_model(world, monkeypatch):
    """An 'oracle-reading' fake generator: right only when the gold document is in the prompt."""
    from nanochat.checkpoint_manager import load_model
    from nanochat.retrieval.precompute import load_precomputed
    from nanochat.data.queries import load_queries
    from nanochat.retrieval.kb import KnowledgeBase
    kb = KnowledgeBase.load(world["kb"])
    items = E.load_items(load_queries(world["data"] / "queries_test.jsonl"),
                         load_precomputed(world["data"] / "retrieval.parquet"), kb, top_k=2, split="test")
    answer_of = {it["question"]: it["answers"][0] for it in items}
    gold_of = {it["question"]: set(it["doc_ids"]) for it in items}

    def fake_generate(engine, convs, max_tokens=48, desc=""):
        out = []
        for c in convs:
            q = c["messages"][-1]["content"]
            ret = [m for m in c["messages"] if m["role"] == "retrieval"]
            shown = {d["doc_id"] for d in ret[0]["documents"]} if ret else set()
            out.append(f"{answer_of[q]} [1]" if gold_of[q] & shown else "no idea")
        return out
    monkeypatch.setattr(E, "generate_answers", fake_generate)
    model, tok, _ = load_model("rag", device="cpu", phase="eval", model_tag="tiny", base_dir=world["base"])
    metrics, rows = E.evaluate(model, tok, items, top_k=2)
    assert metrics["n"] == len(items) > 10
    assert metrics["em_no_retrieval"] == 0.0 and metrics["em_oracle"] == 1.0
    # with retrieval, EM is exactly the share of questions whose (first) gold doc was retrieved
    hit = [bool(set(it["doc_ids"]) & {d["doc_id"] for d in it["retrieved"]}) for it in items]
    assert metrics["em"] == pytest.approx(sum(hit) / len(hit))
    assert 0.0 < metrics["retrieval_recall@2"] <= 1.0 and "retrieval_ndcg@10" in metrics
    assert set(metrics["em_by_hops"]) <= {"1", "2"} and metrics["em_by_hops"]["1"]["oracle"] == 1.0


@pytest.mark.slow
def test_rag_eval_cli_writes_metrics_csv_and_plots(world, tmp_path):
    from scripts.rag_eval import main
    out = tmp_path / "eval"
    main(["--knowledge_base", str(world["kb"]), "--retrieval", str(world["data"] / "retrieval.parquet"),
          "--queries_test", str(world["data"] / "queries_test.jsonl"), "--source", "rag", "--model_tag", "tiny",
          "--base_dir", str(world["base"]), "--max_questions", "3", "--max_tokens", "4", "--device", "cpu",
          "--num_threads", "1", "--output", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("em", "f1", "em_no_retrieval", "em_oracle", "citation_precision", "citation_recall",
                "unsupported_rate", "retrieval_recall@2", "kb_id", "model_tag", "model_step", "n"):
        assert key in metrics, key
    assert metrics["n"] == 3 and metrics["model_tag"] == "tiny" and metrics["model_step"] == 2
    assert 0.0 <= metrics["em"] <= 1.0
    with open(out / "per_question.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and {"answer", "answer_no_retrieval", "answer_oracle", "em"} <= set(rows[0])
    for png in ("metrics_by_condition.png", "em_by_hops.png", "training_curves.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG", png
