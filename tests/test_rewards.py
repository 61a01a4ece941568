"""REFRAG reward on hand-made answers, including attempts to game it."""
import pytest

from nanochat.rag import rewards as R
from nanochat.rag.metrics import ABSTAIN_ANSWER

DOCS = [
    {"id": "acme#0", "title": "Acme Labs", "content": "Acme Labs was founded by Vora Delm."},
    {"id": "vora#0", "title": "Vora Delm", "content": "Vora Delm was born in Zentil."},
    {"id": "bolt#0", "title": "Bolt Works", "content": "Bolt Works is headquartered in Quix."},
    {"id": "ana#0", "title": "Ana Rell", "content": "Ana Rell was born in Morland."},
]
GOLD = ["acme", "vora"]
ANS = ["Zentil"]


def reward(text, docs=DOCS, gold=GOLD):
    return R.compute_reward(text, ANS, docs, gold)


def test_weights_sum_to_one_and_perfect_answer_scores_one():
    assert sum(p.weight for p in R.PARTS.values() if p.weight > 0) == pytest.approx(1.0)
    r = reward("Zentil [1] [2]")
    assert r["reward"] == pytest.approx(1.0) and r["em"] == 1.0 and r["citation"] == 1.0 and r["recall"] == 1.0


def test_components_order_partial_answers():
    uncited = reward("Zentil")["reward"]
    half_cited = reward("Zentil [2]")["reward"]
    assert uncited < half_cited < reward("Zentil [1] [2]")["reward"]
    assert reward("Zentil [1] [2]", docs=DOCS[:1] + DOCS[2:])["recall"] == 0.5  # one gold document not retrieved
    assert reward("Morland [4]")["reward"] < 0.3  # wrong but supported, wrong citation


@pytest.mark.parametrize("text", ["", "   ", "[1] [2]"])
def test_empty_answer_gets_zero(text):
    r = reward(text)
    assert r["reward"] == 0.0 and r["empty"] == 1.0


def test_unsupported_answer_is_penalised():
    r = reward("Paris [1] [2]")
    assert r["unsupported"] == 1.0 and r["reward"] == pytest.approx(max(0, R.PARTS['recall'].weight + R.PARTS['citation'].weight + R.PARTS['unsupported'].weight))
    assert reward("Zentil [1] [2]")["unsupported"] == 0.0


def test_copying_every_document_does_not_pay():
    dump = " ".join(d["content"] for d in DOCS) + " [1] [2] [3] [4]"
    r = reward(dump)
    assert r["long"] == 1.0 or r["f1"] < 0.2
    assert r["reward"] < 0.4 < reward("Zentil [1] [2]")["reward"]


def test_citing_everything_costs_precision():
    everything = reward("Zentil [1] [2] [3] [4]")
    assert everything["citation"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert everything["reward"] < reward("Zentil [1] [2]")["reward"]
    assert R.citation_f1("Zentil [3]", DOCS, GOLD) == 0.0
    assert R.citation_f1("Zentil [9]", DOCS, GOLD) == 0.0  # out of range
    assert R.citation_f1("Zentil", DOCS[2:], GOLD) == 1.0 and R.citation_f1("Zentil [1]", DOCS[2:], GOLD) == 0.0


def test_abstention_only_pays_when_the_answer_is_absent():
    assert reward(ABSTAIN_ANSWER)["reward"] == 0.0  # answer was in the documents
    absent = reward(ABSTAIN_ANSWER, docs=DOCS[2:])
    assert absent["reward"] == R.ABSTAIN_REWARD and absent["abstained"] == 1.0


def test_reward_is_clipped_and_weights_are_arguments():
    r = R.compute_reward("Zentil [1] [2]", ANS, DOCS, GOLD, weights={"f1": 2.0})
    assert r["reward"] == 1.0
    r = R.compute_reward("Paris", ANS, DOCS, GOLD, weights={"unsupported": -5.0})
    assert r["reward"] == 0.0
    assert list(r) == list(R.COMPONENTS)
    with pytest.raises(KeyError, match="unknown reward part"):
        R.compute_reward("Paris", ANS, DOCS, GOLD, weights={"f2": 1.0})
