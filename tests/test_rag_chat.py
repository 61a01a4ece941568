"""Multi-hop chat: scripts.rag_chat --source refrag runs the hops the checkpoint was trained with, prints each
hop's query and documents, numbers documents across hops as the model sees them, and resolves citations across
hops; ChatPipeline answers many questions at once exactly as one at a time.

    python -m pytest -q tests/test_rag_chat.py
"""
import io

import pytest

from nanochat.engine import Engine, Generation


def run_chat(world, *flags, questions=()):
    from scripts.rag_chat import main
    out = io.StringIO()
    stdin = io.StringIO("".join(q + "\n" for q in questions) + "quit\n")
    assert main(["--knowledge_base", str(world["kb"]), "--model_tag", "tiny", "--base_dir", str(world["base"]),
                 "--device", "cpu", "--max_tokens", "12", *flags], stdin=stdin, stdout=out) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def refrag_pipeline(chat_world):
    from nanochat.checkpoint_manager import load_model
    from nanochat.rag.chat import ChatPipeline
    from nanochat.retrieval import RetrievalManager
    model, tok, meta = load_model("refrag", "cpu", "eval", model_tag="tiny", base_dir=chat_world["base"])
    manager = RetrievalManager("simple", knowledge_base_path=chat_world["kb"])
    return ChatPipeline.from_checkpoint(Engine(model, tok), manager, meta, "refrag", max_tokens=12)


def test_refrag_chat_runs_the_trained_hops_and_prints_them(chat_world, refrag_pipeline):
    from nanochat.retrieval.hop_strategies import next_hop_query
    q = chat_world["questions"][0]["question"]
    out = run_chat(chat_world, "--source", "refrag", questions=[q])
    assert "REFRAG: 2 hops x 1 documents, hop strategy titles; simple retrieval" in out  # from the checkpoint meta
    prepared = refrag_pipeline.prepare_many([q])[0]
    hop1, hop2 = prepared.hops
    assert hop1["query"] == q and hop1["documents"] == [1] and hop2["documents"] == [2]
    first = prepared.documents[0]
    assert hop2["query"] == next_hop_query(q, [first], "titles")  # the titles strategy, as trained
    assert [d["hop"] for d in prepared.documents] == [1, 2] and prepared.documents[0]["id"] != prepared.documents[1]["id"]
    for hop in (hop1, hop2):
        assert f"Hop {hop['hop']}: {hop['query']}\n" in out
        n = hop["documents"][0]
        assert f"  [{n}] {prepared.documents[n - 1]['title']}\n" in out
    assert out.count("Assistant: ") == 1 and out.count("[Sources: [") == 1
    text = refrag_pipeline.engine.tokenizer.decode(prepared.prompt)
    assert text.count("<|hop_start|>") == 2  # the model saw both hops in one prompt
    other = run_chat(chat_world, "--source", "refrag", "--hop_strategy", "entities", questions=[q])
    assert "hop strategy entities" in other


def test_citations_resolve_across_hops(chat_world, refrag_pipeline):
    q = chat_world["questions"][1]["question"]
    prepared = refrag_pipeline.prepare_many([q])[0]
    tok = refrag_pipeline.engine.tokenizer
    answer = refrag_pipeline.finish(prepared, Generation(tok.encode(" Velmora [2] [1] [7]"), "stop_token", None, 10))
    assert answer.text == "Velmora [2] [1] [7]"
    assert answer.citations == [2, 1]  # [7] names no document shown
    assert [d["hop"] for d in answer.cited_documents()] == [2, 1]
    from scripts.rag_chat import print_answer
    out = io.StringIO()
    print_answer(answer, "refrag", out)
    assert f"[Sources: [2] {prepared.documents[1]['title']}, [1] {prepared.documents[0]['title']}]" in out.getvalue()


def test_many_questions_answered_together_as_one_at_a_time(chat_world, refrag_pipeline):
    questions = [q["question"] for q in chat_world["questions"][:12]]
    together = refrag_pipeline.answer_many(questions, batch_size=5)
    alone = [refrag_pipeline.answer(q) for q in questions]
    assert [(a.text, a.citations, a.hops) for a in together] == [(a.text, a.citations, a.hops) for a in alone]
    assert any(a.citations for a in together)  # the fine-tuned tiny model cites


def test_rag_chat_cites_numbered_sources(chat_world):
    q = chat_world["questions"][0]["question"]
    out = run_chat(chat_world, "--source", "rag", "--retriever_type", "simple", questions=[q, "", "Who?"])
    assert "RAG: top 2 documents; simple retrieval" in out and "Hop 1:" not in out
    assert out.count("Assistant: ") == 2 and out.count("[Sources: [1] ") == 1  # a blank line is skipped
    assert "[Sources: none retrieved]" in out  # "Who?" shares no word with any document


def test_question_too_long_for_the_context_is_a_clear_error(refrag_pipeline):
    with pytest.raises(ValueError, match="longer than the model's prompt budget"):
        refrag_pipeline.prepare_many(["why " * 400])
    got = refrag_pipeline.prepare_many(["why " * 400, "Who founded it?"], errors="return")
    assert isinstance(got[0], ValueError) and got[1].prompt


def test_abstain_threshold_turns_unsure_answers_into_the_abstention_sentence(chat_world):
    """--abstain_threshold in chat (and so in the server, which shares load_pipeline): above every answer's mean
    token probability each answer becomes the abstention sentence; at 0 nothing changes."""
    from nanochat.rag.metrics import ABSTAIN_ANSWER
    q = chat_world["questions"][0]["question"]
    plain = run_chat(chat_world, "--source", "rag", "--retriever_type", "simple", questions=[q])
    assert f"Assistant: {ABSTAIN_ANSWER}" not in plain
    assert run_chat(chat_world, "--source", "rag", "--retriever_type", "simple", "--abstain_threshold", "0",
                    questions=[q]) == plain
    unsure = run_chat(chat_world, "--source", "rag", "--retriever_type", "simple", "--abstain_threshold", "1.01",
                      questions=[q])
    assert f"Assistant: {ABSTAIN_ANSWER}" in unsure
