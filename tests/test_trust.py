"""Answers users can trust: counterfactual documents, failure classes, the abstention threshold, abstain targets.

    python -m pytest -q tests/test_trust.py
"""
import math
import re

import pytest
import torch

from nanochat.rag import confidence as C
from nanochat.rag import counterfactual as CF
from nanochat.rag import failures as F
from nanochat.rag.metrics import ABSTAIN_ANSWER

DOCS = [
    {"id": "person-1#0", "doc_id": "person-1", "title": "Ana Vik",
     "content": "Ana Vik was born in Hilluxlom. In 1950, Ana spent a summer in Hilluxlom and Zorbel. She is a pilot."},
    {"id": "city-2#0", "doc_id": "city-2", "title": "Hilluxlom",
     "content": "Hilluxlom is a city in Paxland. Hilluxlomia is not a city."},
]
QUERIES = [
    {"id": "q1", "question": "Where was Ana Vik born?", "answers": ["Hilluxlom"], "doc_ids": ["person-1"]},
    {"id": "q2", "question": "Where was Bo Tal born?", "answers": ["Zorbel"], "doc_ids": ["person-3"]},
    {"id": "q3", "question": "Where was Cy Rud born?", "answers": ["Mirdun"], "doc_ids": ["person-4"]},
    {"id": "q4", "question": "What is the birth year of Ana Vik?", "answers": ["1972"], "doc_ids": ["person-1"]},
    {"id": "q5", "question": "What is the birth year of Bo Tal?", "answers": ["1931"], "doc_ids": ["person-3"]},
    {"id": "q6", "question": "Who founded Acme Works?", "answers": ["Ana Vik"], "doc_ids": ["company-5"]},
]


# -----------------------------------------------------------------------------
# counterfactual rewriting

def test_counterfactual_changes_the_answer_and_nothing_else():
    pool = CF.answer_pool(QUERIES)
    made = CF.counterfactual_documents("Where was Ana Vik born?", ["Hilluxlom"], DOCS, ["person-1"], pool, seed=0,
                                       key="q1")
    assert made is not None
    new_docs, sub = made
    # a same-type substitute from the pool (another birth city), never one already written in the documents
    assert sub == "Mirdun"  # Zorbel is in the shown text, so the only other city answer is left
    old, new = DOCS[0]["content"], new_docs[0]["content"]
    assert "Hilluxlom" not in new and new.count(sub) == old.count("Hilluxlom") == 2
    assert new.replace(sub, "Hilluxlom") == old  # only the answer's occurrences changed
    assert new_docs[0]["title"] == DOCS[0]["title"] and new_docs[0]["id"] == DOCS[0]["id"]
    assert new_docs[1] == DOCS[1]  # not a gold document: untouched, though it names the old value
    assert DOCS[0]["content"] == old  # the input is not modified


def test_counterfactual_is_seeded_and_typed():
    queries = QUERIES + [{"id": f"x{i}", "question": f"Where was Per{i} Son born?", "answers": [f"Town{i}"],
                          "doc_ids": ["d"]} for i in range(20)]
    pool = CF.answer_pool(queries)
    pick = lambda seed, key: CF.pick_substitute("Where was Ana Vik born?", ["Hilluxlom"], "", pool, seed, key)  # noqa: E731
    assert pick(0, "q1") == pick(0, "q1")
    assert len({pick(s, "q1") for s in range(10)}) > 1
    # years are replaced by years, names of two words by names of two words
    year = CF.pick_substitute("What is the birth year of Ana Vik?", ["1972"], "", pool, 0, "q4")
    assert year == "1931"
    name = CF.pick_substitute("Who founded Acme Works?", ["Ana Vik"], "", CF.answer_pool(QUERIES + [
        {"id": "q7", "question": "Who founded Zed Labs?", "answers": ["Ola Nor"], "doc_ids": ["c"]}]), 0, "q6")
    assert name == "Ola Nor"
    assert CF.answer_shape("1972") == ("num", 4) and CF.answer_shape("eel pie") == ("low", 2)
    assert CF.question_template("Where was Ana Vik born?") == CF.question_template("Where was Bo Tal born?")


def test_counterfactual_skips_what_it_cannot_rewrite():
    pool = CF.answer_pool(QUERIES)
    assert CF.counterfactual_documents("Where was Ana Vik born?", ["Hilluxlom"], DOCS[1:], ["person-1"], pool) is None
    assert CF.counterfactual_documents("Where was Ana Vik born?", ["Oslo"], DOCS, ["person-1"], pool) is None
    assert CF.counterfactual_documents("Where was Ana Vik born?", ["Hilluxlom"], DOCS, ["person-1"], {}) is None
    # a user KB without question answers: same-shape words of the documents
    pool = CF.text_pool([d["content"] for d in DOCS])
    assert CF.pick_substitute("Where was Ana Vik born?", ["Hilluxlom"], "", pool, 0) in {"Paxland", "Zorbel", "Vik",
                                                                                         "Ana", "Hilluxlomia"}


# -----------------------------------------------------------------------------
# failure classes

@pytest.mark.parametrize("row, expected", [
    ({"em": 1, "abstained": 0, "gold_present": 1}, "correct"),
    ({"em": 1, "abstained": 0, "gold_present": 0}, "correct"),
    ({"em": 0, "abstained": 1, "gold_present": 0}, "retrieval_miss"),
    ({"em": 0, "abstained": 0, "gold_present": 1, "em_no_retrieval": 0}, "reading_error"),
    ({"em": 0, "abstained": 0, "gold_present": 1, "em_no_retrieval": 1}, "answered_from_memory"),
    ({"em": 1, "abstained": 0, "gold_present": 1, "cf_memory": 1}, "answered_from_memory"),
    ({"em": 1, "abstained": 0, "gold_present": 1, "cf_memory": 0, "cf_follow": 1}, "correct"),
    ({"em": 0, "abstained": 0, "gold_present": 0, "em_no_retrieval": 0}, "wrong_abstention"),
    ({"em": 0, "abstained": 1, "gold_present": 1}, "false_abstention"),
    ({"em": 0, "abstained": 0, "gold_present": math.nan}, "reading_error"),  # no gold ids: counted as shown
    ({"em": "0.0", "abstained": "1.0", "gold_present": "1.0", "cf_memory": ""}, "false_abstention"),  # CSV strings
])
def test_every_failure_class(row, expected):
    assert F.classify(row) == expected


def test_failure_summary_shares_sum_to_one_per_hop():
    rows = [{"em": 1, "abstained": 0, "gold_present": 1, "hops": 1}, {"em": 0, "abstained": 1, "gold_present": 0, "hops": 2},
            {"em": 0, "abstained": 0, "gold_present": 0, "hops": 2}, {"em": 0, "abstained": 0, "gold_present": 1, "hops": 1}]
    s = F.attribute(rows)
    assert [r["failure_class"] for r in rows] == ["correct", "retrieval_miss", "wrong_abstention", "reading_error"]
    assert s["counts"]["correct"] == 1 and sum(s["counts"].values()) == 4
    assert set(s["all"]) == set(F.CLASSES) and sum(s["all"].values()) == pytest.approx(1.0)
    assert s["by_hops"]["2"] == pytest.approx({**{c: 0.0 for c in F.CLASSES}, "retrieval_miss": 0.5,
                                               "wrong_abstention": 0.5})


# -----------------------------------------------------------------------------
# the abstention threshold

class ToyModel(torch.nn.Module):
    """A bigram model with fixed probabilities: p(next | current) = table[current]. Token 1 is always followed by
    token 2 with p 0.9 (a confident answer), token 3 by one of 4..7 uniformly (an unsure one)."""

    def __init__(self, vocab=8):
        super().__init__()
        table = torch.full((vocab, vocab), 1e-3)
        table[0, 1] = table[0, 3] = 0.5  # the prompt's last token opens either answer
        table[1, 2] = 0.9
        table[3, 4:8] = 0.25
        table[2, 0] = table[4:8, 0] = 0.9
        self.logp = torch.log(table / table.sum(-1, keepdim=True))
        self.config = type("Cfg", (), {"sequence_len": 64})()

    def get_device(self):
        return torch.device("cpu")

    def forward(self, ids, targets=None, loss_reduction="mean"):
        logp = self.logp[ids]  # (B, T, V)
        if targets is None:
            return logp
        nll = -logp.gather(-1, targets.clamp_min(0)[..., None])[..., 0] * (targets >= 0)
        return nll.view(-1) if loss_reduction == "none" else nll.sum()


def test_token_probabilities_of_a_toy_model():
    m = ToyModel()
    p = m.logp.exp()
    assert C.token_probabilities(m, [0], [1, 2]) == pytest.approx([p[0, 1].item(), p[1, 2].item()])
    assert C.token_probabilities(m, [0, 0], [3, 5]) == pytest.approx([p[0, 3].item(), p[3, 5].item()])
    assert p[1, 2] > 0.99 and p[3, 5] < 0.25


def test_threshold_calibration_on_a_toy_model():
    m = ToyModel()
    sure = sum(C.token_probabilities(m, [0], [1, 2])) / 2   # ~0.75, and right 95 times in 100
    unsure = sum(C.token_probabilities(m, [0], [3, 5])) / 2  # ~0.37, and right 10 times in 100
    conf = [sure] * 100 + [unsure] * 100
    correct = [i >= 5 for i in range(100)] + [i < 10 for i in range(100)]
    cal = C.calibrate_threshold(conf, correct, max_false_abstention=0.1)
    assert unsure < cal["threshold"] <= sure
    assert cal["dropped_wrong"] == 90 and cal["false_abstention"] == pytest.approx(10 / 105)
    # a stricter budget for correct answers abstained on: no threshold at all
    strict = C.calibrate_threshold(conf, correct, max_false_abstention=0.05)
    assert strict["threshold"] == 0.0 and strict["dropped_wrong"] == 0
    assert C.apply_threshold(" 5 [1]", unsure, cal["threshold"]) == ABSTAIN_ANSWER
    assert C.apply_threshold(" 2 [1]", sure, cal["threshold"]) == " 2 [1]"
    assert C.apply_threshold(" 5 [1]", unsure, None) == " 5 [1]"


def test_threshold_from_flag_values(tmp_path):
    assert C.resolve_threshold(None) is None and C.resolve_threshold("none") is None
    assert C.resolve_threshold("0.4") == 0.4
    (tmp_path / "cal.json").write_text('{"threshold": 0.31}')
    assert C.resolve_threshold(str(tmp_path / "cal.json")) == 0.31
    with pytest.raises(FileNotFoundError):
        C.resolve_threshold(str(tmp_path / "missing.json"))


# -----------------------------------------------------------------------------
# training data: examples without the answer's document carry the abstain target

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from nanochat.data.synthetic import generate_world
    from nanochat.retrieval.kb import build_knowledge_base
    from nanochat.retrieval.precompute import load_precomputed, precompute_retrieval
    d = tmp_path_factory.mktemp("trust")
    generate_world(d, seed=0, n_entities=200)
    kb = build_knowledge_base(d / "documents.jsonl", d / "kb", retriever_types=("bm25",), show_progress=False)
    files = {s: d / f"queries_{s}.jsonl" for s in ("train", "val")}
    precompute_retrieval(d / "kb", "bm25", files, 10, d / "ret.parquet")
    return d, kb, load_precomputed(d / "ret.parquet"), files


@pytest.mark.parametrize("negatives", ["no_gold", "answer_doc"])
def test_examples_without_the_answer_document_carry_the_abstain_target(world, negatives):
    from nanochat.data.queries import load_queries
    from nanochat.rag.metrics import contains_answer
    from nanochat.rag.raft import build_examples
    d, kb, table, files = world
    queries = {q["id"]: q for q in load_queries(files["train"])}
    ex, stats = build_examples(list(queries.values()), table, kb.chunks, "train", top_k=2, p_gold=0.5, seed=0,
                               negatives=negatives)
    abstain = [e for e in ex if not e["with_gold"]]
    assert stats["abstain"] == len(abstain) > 100
    kept_bridge = 0
    for e in abstain:
        q = queries[e["query_id"]]
        msgs = e["conversation"]["messages"]
        docs = msgs[1]["documents"]
        assert msgs[-1] == {"role": "assistant", "content": ABSTAIN_ANSWER} and e["cited"] == []
        shown = {x["id"].split("#")[0] for x in docs}
        assert q["doc_ids"][-1] not in shown  # the document the answer is read from is never shown
        assert not any(contains_answer(x["content"], q["answers"]) for x in docs)
        kept_bridge += len(q["doc_ids"]) > 1 and q["doc_ids"][0] in shown
    assert (kept_bridge > 0) == (negatives == "answer_doc")  # a bridge without its answer document: abstain
    answered = [e for e in ex if e["with_gold"]]
    assert all(re.search(r"\[\d\]", e["conversation"]["messages"][-1]["content"]) for e in answered)


def test_multihop_questions_get_their_own_share_of_examples_with_the_answer(world):
    """p_gold_multihop: two-hop questions of a single-hop run mostly show their bridge without the answer's
    document and abstain; one-hop questions keep p_gold, with the same draws as without the option."""
    from nanochat.data.queries import load_queries
    from nanochat.rag.raft import build_examples
    d, kb, table, files = world
    queries = load_queries(files["train"])
    hops = {q["id"]: len(q["doc_ids"]) for q in queries}
    plain, _ = build_examples(queries, table, kb.chunks, "train", top_k=2, p_gold=0.9, seed=0, negatives="answer_doc")
    mixed, stats = build_examples(queries, table, kb.chunks, "train", top_k=2, p_gold=0.9, seed=0,
                                  negatives="answer_doc", p_gold_multihop=0.0)
    two = [e for e in mixed if hops[e["query_id"]] > 1]
    assert len(two) > 20 and not any(e["with_gold"] for e in two)
    one = lambda ex: [(e["query_id"], e["with_gold"], e["conversation"]) for e in ex if hops[e["query_id"]] == 1]
    assert one(mixed) == one(plain)
    assert stats["abstain"] == sum(not e["with_gold"] for e in mixed)
    with pytest.raises(ValueError, match="p_gold_multihop"):
        build_examples(queries, table, kb.chunks, "train", p_gold_multihop=1.5)
