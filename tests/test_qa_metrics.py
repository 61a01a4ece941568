"""Hand-checked QA metrics. Run: python -m pytest -q tests/test_qa_metrics.py"""
import pytest

from nanochat.rag.metrics import (ABSTAIN_ANSWER, citation_precision, citation_recall, exact_match, f1_score,
                                 is_abstention, is_unsupported, normalize_answer, parse_citations, strip_citations)


def test_normalize_answer_squad_rules():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple, a pear and THE plum") == "apple pear and plum"


def test_exact_match_and_f1_hand_checked():
    assert exact_match("1987 [2]", ["1987"]) == 1.0
    assert exact_match("the Zorvik Labs.", "Zorvik Labs") == 1.0
    assert exact_match("Zorvik", ["Zorvik Labs"]) == 0.0
    # pred "zorvik labs inc" vs gold "zorvik labs": overlap 2, P=2/3, R=1 -> F1=0.8
    assert f1_score("Zorvik Labs Inc", ["Zorvik Labs"]) == pytest.approx(0.8)
    # max over gold answers
    assert f1_score("red", ["blue", "red"]) == 1.0
    assert f1_score("green", ["blue"]) == 0.0
    assert f1_score("", []) == 0.0


def test_citations_parse_and_strip():
    assert parse_citations("Belport [3] [1], see also [3] and [2, 4]") == [3, 1, 2, 4]
    assert parse_citations("no citations here") == []
    assert strip_citations("1987 [2][4].") == "1987 ."
    assert strip_citations("Belport [3] [1]") == "Belport"


def test_citation_precision_and_recall():
    docs = [{"id": "a#0", "title": "A", "content": "Zorvik Labs was founded in 1987."},
            {"id": "b#0", "title": "B", "content": "Nothing relevant."},
            {"id": "c#0", "doc_id": "c", "title": "C", "content": "Founded 1987 too."}]
    assert citation_precision("1987 [1]", docs, ["1987"]) == 1.0
    assert citation_precision("1987 [1] [2]", docs, ["1987"]) == 0.5
    assert citation_precision("1987 [9]", docs, ["1987"]) == 0.0  # out of range is wrong
    assert citation_precision("1987", docs, ["1987"]) is None
    assert citation_recall("1987 [1]", docs, ["a", "c"]) == 0.5
    assert citation_recall("1987 [1] [3]", docs, ["a", "c"]) == 1.0
    assert citation_recall("1987 [1]", docs, ["zzz"]) is None


def test_unsupported_and_abstention():
    docs = [{"title": "A", "content": "The Vexor kettle is red."}]
    assert not is_unsupported("red [1]", docs)
    assert is_unsupported("blue [1]", docs)
    assert is_unsupported("re", docs)  # whole tokens only: "re" is not "red"
    assert is_abstention(ABSTAIN_ANSWER)
    assert is_abstention("the provided documents do not contain the answer")
    assert not is_abstention("The documents contain the answer: red.")
    assert not is_unsupported(ABSTAIN_ANSWER, docs)
