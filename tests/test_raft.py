"""RAFT examples: mix, seeding, citations, masks, shards. Run: python -m pytest -q tests/test_raft.py"""
import json

import numpy as np
import pytest

from nanochat.retrieval.precompute import load_precomputed, precompute_retrieval
from nanochat.rag.metrics import ABSTAIN_ANSWER, contains_answer, parse_citations
from nanochat.data.queries import load_queries
from nanochat.rag.dataset import build_dataset
from nanochat.rag.raft import build_eval_conversations, build_examples
from nanochat.rag.base_tasks import load_base_conversations
from nanochat.rag.shards import load_dataset_shards, rank_slice
from nanochat.data.synthetic import generate_world


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from nanochat.retrieval.kb import build_knowledge_base
    d = tmp_path_factory.mktemp("raft")
    generate_world(d, seed=0, n_entities=200)
    kb = build_knowledge_base(d / "documents.jsonl", d / "kb", retriever_types=("simple",), show_progress=False)
    files = {s: d / f"queries_{s}.jsonl" for s in ("train", "val", "test")}
    precompute_retrieval(d / "kb", "simple", files, 10, d / "ret.parquet")
    return d, kb.chunks, load_precomputed(d / "ret.parquet"), files


def _docs(conv):
    return next(m for m in conv["messages"] if m["role"] == "retrieval")["documents"]


def test_mix_proportion_and_seeding(setup):
    d, chunks, table, files = setup
    queries = load_queries(files["train"])
    ex, stats = build_examples(queries, table, chunks, "train", top_k=4, p_gold=0.7, seed=1)
    assert stats["skipped"] == 0 and len(ex) == len(queries) > 400
    assert abs(stats["p_gold_actual"] - 0.7) < 0.07
    again, _ = build_examples(queries, table, chunks, "train", top_k=4, p_gold=0.7, seed=1)
    assert json.dumps([e["conversation"] for e in ex]) == json.dumps([e["conversation"] for e in again])
    other, _ = build_examples(queries, table, chunks, "train", top_k=4, p_gold=0.7, seed=2)
    assert json.dumps([e["conversation"] for e in ex]) != json.dumps([e["conversation"] for e in other])
    allgold, s1 = build_examples(queries[:50], table, chunks, "train", p_gold=1.0)
    assert s1["abstain"] == 0


def test_citations_point_at_gold_and_abstentions_have_none(setup):
    d, chunks, table, files = setup
    queries = {q["id"]: q for q in load_queries(files["train"])}
    ex, _ = build_examples(list(queries.values()), table, chunks, "train", top_k=4, p_gold=0.5, seed=0)
    first_positions = set()
    for e in ex:
        q, docs = queries[e["query_id"]], _docs(e["conversation"])
        answer = e["conversation"]["messages"][-1]["content"]
        doc_of = [x["id"].split("#")[0] for x in docs]
        assert len(docs) == 4 and len(set(x["id"] for x in docs)) == 4
        if e["with_gold"]:
            cited = parse_citations(answer)
            assert answer.startswith(" " + q["answers"][0] + " ") and cited == e["cited"] and len(cited) == q["hops"]
            assert [doc_of[n - 1] for n in cited] == q["doc_ids"]  # hop order
            assert contains_answer(docs[cited[-1] - 1]["content"], q["answers"])
            first_positions.add(cited[0])
        else:
            assert answer == ABSTAIN_ANSWER and not set(doc_of) & set(q["doc_ids"])
    assert first_positions == {1, 2, 3, 4}  # order shuffled: gold is not always first


def test_eval_conversations_have_no_answer(setup):
    d, chunks, table, files = setup
    out = build_eval_conversations(load_queries(files["test"])[:5], table, chunks, "test", top_k=3)
    assert len(out) == 5
    for q, conv in out:
        assert [m["role"] for m in conv["messages"]] == ["system", "retrieval", "user"] and len(_docs(conv)) == 3


def test_shards_masks_and_base_mix(setup, tmp_path):
    from nanochat.tokenizer import Tokenizer
    d, chunks, table, files = setup
    tok = Tokenizer.train_from_iterator(list(chunks["content"]) + [ABSTAIN_ANSWER], 600)
    chat = tmp_path / "chat.jsonl"
    chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"},
                                                     {"role": "assistant", "content": f"hello {i}"}]}) + "\n"
                            for i in range(200)), encoding="utf-8")
    out = tmp_path / "ds"
    m = build_dataset(chunks, table, {"train": files["train"], "val": files["val"]}, tok, out, top_k=3,
                      max_seq_len=160, max_doc_length=30, seed=0, base_tasks=str(chat), base_mix=0.1,
                      examples_per_shard=200)
    tr = m["splits"]["train"]
    assert tr["base_conversations"] > 0 and len(tr["shards"]) > 1
    ds = load_dataset_shards(out, "train")
    assert len(ds) == tr["n_examples"] and sum(len(ds[i][0]) for i in range(len(ds))) == tr["n_tokens"]
    aend, rstart = tok.encode_special("<|assistant_end|>"), tok.encode_special("<|retrieval_start|>")
    n_base = 0
    for i in range(len(ds)):
        ids, mask = ds[i]
        assert ids.dtype == np.int32 and mask.dtype == np.uint8 and len(ids) <= 160
        sup = tok.decode(ids[mask == 1].tolist())
        assert sup.endswith("<|assistant_end|>") and mask[-1] == 1 and ids[-1] == aend
        start = int(np.argmax(ids == tok.encode_special("<|assistant_start|>")))
        assert mask[: start + 1].sum() == 0  # nothing before the answer is supervised
        if rstart not in ids:
            n_base += 1
            assert sup.startswith("hello")  # general chat never gets documents
    assert n_base == tr["base_conversations"]
    assert len(load_dataset_shards(out, "val")) == m["splits"]["val"]["n_examples"]
    assert list(rank_slice(10, 1, 3)) == [1, 4, 7] and len(rank_slice(10, 2, 3)) == 3


def test_smoltalk_must_be_cached_when_requested(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(FileNotFoundError, match="'smoltalk' requested but .* not cached"):
        load_base_conversations("smoltalk", 5, 0)
    assert load_base_conversations(None, 5, 0) == []  # the default warns and continues without it


def test_answer_tokens_are_a_copy_of_the_document_tokens(setup):
    from nanochat.rag.conversation import answer_target
    from nanochat.tokenizer import Tokenizer
    d, chunks, table, files = setup
    tok = Tokenizer.train_from_iterator(list(chunks["content"]), 600)
    q = next(q for q in load_queries(files["train"]) if q["hops"] == 1)
    doc = next(c for c in chunks["content"] if contains_answer(c, q["answers"]))
    target = tok.encode(answer_target(q["answers"][0], [1]))
    answer_ids = tok.encode(" " + q["answers"][0])
    assert target[:len(answer_ids)] == answer_ids
    doc_ids = tok.encode(doc)
    assert any(doc_ids[i:i + len(answer_ids)] == answer_ids for i in range(len(doc_ids)))


def test_multi_turn_conversations_answer_from_the_same_documents(setup):
    d, chunks, table, files = setup
    queries = {q["id"]: q for q in load_queries(files["train"])}
    by_question = {q["question"]: q for q in queries.values()}
    ex, stats = build_examples(list(queries.values()), table, chunks, "train", top_k=2, p_gold=0.8, seed=0, turns=3)
    assert stats["extra_turns"] > len(ex) // 2
    n_multi = 0
    for e in ex:
        msgs = e["conversation"]["messages"]
        docs = _docs(e["conversation"])
        doc_of = [x["id"].split("#")[0] for x in docs]
        pairs = [(msgs[i]["content"], msgs[i + 1]["content"]) for i in range(2, len(msgs), 2)]
        assert [m["role"] for m in msgs[2:]] == ["user", "assistant"] * len(pairs) and len(pairs) <= 3
        entity = queries[e["query_id"]]["doc_ids"][0]  # the entity's own document comes first
        n_multi += len(pairs) > 1
        for question, answer in pairs:
            q = by_question[question]
            assert q["doc_ids"][0] == entity
            if answer == ABSTAIN_ANSWER:
                assert not set(doc_of) & set(q["doc_ids"])
            else:
                cited = parse_citations(answer)
                assert answer.startswith(" " + q["answers"][0]) and [doc_of[n - 1] for n in cited] == q["doc_ids"]
                assert contains_answer(docs[cited[-1] - 1]["content"], q["answers"])
    assert n_multi > len(ex) // 2
    single, _ = build_examples(list(queries.values()), table, chunks, "train", top_k=2, p_gold=0.8, seed=0)
    assert all(len(e["conversation"]["messages"]) == 4 for e in single)


def test_counterfactual_answers_are_swapped_in_documents_and_targets(setup):
    d, chunks, table, files = setup
    queries = {q["id"]: q for q in load_queries(files["train"])}
    ex, stats = build_examples(list(queries.values()), table, chunks, "train", top_k=2, p_gold=1.0, seed=0,
                               p_counterfactual=1.0)
    assert stats["counterfactual"] == len(ex)
    swapped = 0
    for e in ex:
        q = queries[e["query_id"]]
        answer = e["conversation"]["messages"][-1]["content"]
        new = answer.split(" [")[0].strip()
        docs = _docs(e["conversation"])
        assert contains_answer(docs[e["cited"][-1] - 1]["content"], [new])  # still answerable by copying
        if new != q["answers"][0]:
            swapped += 1
            assert new.isdigit() == q["answers"][0].isdigit()
            assert not any(contains_answer(x["content"], q["answers"]) for x in docs)
    assert swapped > 0.9 * len(ex)


def test_quote_answers_quote_the_shown_documents_verbatim_and_score_on_the_answer(setup):
    from nanochat.data.chunking import split_sentences
    from nanochat.rag.metrics import ANSWER_MARKER, exact_match, f1_score, final_answer
    d, chunks, table, files = setup
    queries = {q["id"]: q for q in load_queries(files["train"])}
    ex, _ = build_examples(list(queries.values()), table, chunks, "train", top_k=3, p_gold=0.8, seed=0,
                           answer_style="quote")
    seen_hops = set()
    for e in ex:
        q, docs = queries[e["query_id"]], _docs(e["conversation"])
        answer = e["conversation"]["messages"][-1]["content"]
        if not e["with_gold"]:
            assert answer == ABSTAIN_ANSWER
            continue
        head, tail = answer.split("\n" + ANSWER_MARKER)
        assert exact_match(answer, q["answers"]) == 1.0 and f1_score(answer, q["answers"]) == 1.0
        assert final_answer(answer).strip().startswith(q["answers"][0])
        # every quoted sentence is a sentence of a cited document, the last one holds the answer
        cited_sentences = [s for n in e["cited"] for s in split_sentences(docs[n - 1]["content"])]
        quoted = head.rsplit(" [", len(e["cited"]))[0].strip()
        parts = [s for s in cited_sentences if s in quoted]
        assert " ".join(parts) == quoted and len(parts) == len(e["cited"])
        assert contains_answer(parts[-1], q["answers"])
        seen_hops.add(q["hops"])
    assert seen_hops == {1, 2}
    # short style (the default) is unchanged, and a plain short answer scores as before
    short, _ = build_examples(list(queries.values())[:20], table, chunks, "train", top_k=3, p_gold=1.0, seed=0)
    assert all(ANSWER_MARKER not in e["conversation"]["messages"][-1]["content"] for e in short)
    assert exact_match("Wexlux [1]", ["wexlux"]) == 1.0 and exact_match(f"Wexlux was. [1]\n{ANSWER_MARKER} 1990", ["1990"])


def test_turn_scope_shown_asks_about_every_shown_document(setup):
    d, chunks, table, files = setup
    queries = {q["id"]: q for q in load_queries(files["train"])}
    by_question = {q["question"]: q for q in queries.values()}
    ex, stats = build_examples(list(queries.values()), table, chunks, "train", top_k=2, p_gold=1.0, seed=0,
                               turns=6, turn_scope="shown")
    entity_only, _ = build_examples(list(queries.values()), table, chunks, "train", top_k=2, p_gold=1.0, seed=0,
                                    turns=6)
    assert stats["extra_turns"] > sum(len(e["conversation"]["messages"]) - 4 for e in entity_only) // 2
    other_entity = 0
    for e in ex:
        msgs, docs = e["conversation"]["messages"], _docs(e["conversation"])
        doc_of = [x["id"].split("#")[0] for x in docs]
        first = queries[e["query_id"]]
        for i in range(4, len(msgs), 2):
            q, answer = by_question[msgs[i]["content"]], msgs[i + 1]["content"]
            assert set(q["doc_ids"]) <= set(doc_of)  # every extra turn is answerable from the shown documents
            assert [doc_of[n - 1] for n in parse_citations(answer)] == q["doc_ids"]
            other_entity += q["doc_ids"][0] != first["doc_ids"][0]
    assert other_entity > len(ex) // 4  # the turns are not all about the first question's entity
