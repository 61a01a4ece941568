"""Multi-hop retrieval: hop query strategies, deduplication, early stop, batching, rows, multi_hop rendering."""
import random

import numpy as np
import pandas as pd
import pytest

from nanochat.retrieval import multihop as MH

CHUNKS = pd.DataFrame([
    {"id": "acme#0", "doc_id": "acme", "title": "Acme Labs",
     "content": "Acme Labs was founded in 1990. Acme Labs was founded by Vora Delm. It is based in Quix."},
    {"id": "vora#0", "doc_id": "vora", "title": "Vora Delm", "content": "Vora Delm was born in Zentil. Vora Delm is a pilot."},
    {"id": "zentil#0", "doc_id": "zentil", "title": "Zentil", "content": "Zentil is a city in Morland."},
    {"id": "quix#0", "doc_id": "quix", "title": "Quix", "content": "Quix is known for its castle."},
    {"id": "other#0", "doc_id": "other", "title": "Bolt Works", "content": "Bolt Works was founded in 1950 by Ana Rell."},
])


class FakeManager:
    """search_batch by word overlap with title + content (ties by row), counting calls."""

    def __init__(self, chunks=CHUNKS):
        self.kb = type("KB", (), {"chunks": chunks})()
        self.calls = []
        self.texts = [set(f"{t} {c}".lower().replace(".", " ").split()) for t, c in zip(chunks["title"], chunks["content"])]

    def search_batch(self, queries, top_k):
        self.calls.append((list(queries), top_k))
        idx = np.full((len(queries), top_k), -1, np.int64)
        sc = np.full((len(queries), top_k), -np.inf, np.float32)
        for qi, q in enumerate(queries):
            words = set(q.lower().replace("?", " ").split())
            scores = [len(words & t) for t in self.texts]
            order = [i for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)) if scores[i] > 0][:top_k]
            idx[qi, :len(order)] = order
            sc[qi, :len(order)] = [scores[i] for i in order]
        return idx, sc


Q = "In which city was the founder of Acme Labs born?"


def test_entities_are_bridge_names_not_in_question_or_title():
    passage = CHUNKS.loc[0, "content"]
    ents = MH.extract_entities(passage, known=f"{Q} Acme Labs")
    assert ents == ["1990", "Vora Delm", "Quix"]  # "Acme Labs" known; sentence-initial "It" is not a name
    assert MH.extract_entities("Paris is big. He met Tom Hardy in Rome.") == ["Paris", "Tom Hardy", "Rome"]
    assert MH.extract_entities("He met Tom and Tom again.", known="") == ["Tom"]  # deduplicated
    # a sentence's first word is a name only if the passage never writes it in lower case
    assert MH.extract_entities("Despite rain, Ana won. She won despite it.") == ["Ana"]
    # initials do not end a sentence, and they stay one name with the surname
    assert MH.extract_entities("He met C.J. Hunter and U.S. Army men in 1999! Then left.") == ["C.J. Hunter", "U.S. Army", "1999"]
    assert MH.extract_entities("It was 1999 again.", known="1999") == []  # known years are dropped too
    # a name never runs across a sentence end, even when the next sentence opens with a name
    assert MH.extract_entities("Acme opened an office in Oslo. Acme was founded by Vora Delm.",
                               known="Acme") == ["Oslo", "Vora Delm"]


def test_focused_keeps_the_names_of_the_sentences_the_question_asks_about():
    passage = ("Acme Labs was founded in 1990. In 1995 the firm opened an office in Quix. Acme Labs was founded by "
               "Vora Delm. Acme Labs is headquartered in Paxhil.")
    known = "Acme Labs"
    assert MH.focus_sentences(passage, "In which country is Acme Labs headquartered?") == {3}
    assert MH.extract_entities(passage, known, sentences={3}) == ["Paxhil"]
    # "founder" meets "founded" (5-letter stems): both founding sentences tie
    assert MH.focus_sentences(passage, "In which city was the founder of Acme Labs born?") == {0, 2}
    doc = [{"title": known, "content": passage}]
    assert MH.next_hop_query("In which city was the founder of Acme Labs born?", doc, "focused") == \
        "In which city was the founder of Acme Labs born? 1990 Vora Delm"
    assert MH.next_hop_query("In which country is Acme Labs headquartered?", doc, "focused") == \
        "In which country is Acme Labs headquartered? Paxhil"
    # words of the title do not count: every sentence of "the Zorn lamp" says "lamp"
    lamp = "The Zorn lamp is made by Acme Labs. The Zorn lamp was released in 2019."
    assert MH.focus_sentences(lamp, "When was the maker of the Zorn lamp founded?") == {0, 1}
    assert MH.focus_sentences(lamp, "When was the maker of the Zorn lamp founded?", title="The Zorn lamp") is None
    # no shared stem: every name, as entities does
    q = "Who owns Acme Labs?"
    assert MH.focus_sentences(passage, q) is None
    assert MH.next_hop_query(q, doc, "focused") == MH.next_hop_query(q, doc, "entities")


def test_next_hop_query_per_strategy():
    docs = CHUNKS.iloc[:2].to_dict("records")
    assert MH.next_hop_query(Q, docs, "titles") == f"{Q} Acme Labs Vora Delm"
    assert MH.next_hop_query(Q, docs, "passage") == f"{Q} Acme Labs. {docs[0]['content']}"
    assert MH.next_hop_query(Q, docs, "entities") == f"{Q} 1990 Vora Delm Quix"
    assert MH.next_hop_query(Q, docs, "append") == MH.next_hop_query(Q, docs, "entities")
    seen = []
    assert MH.next_hop_query(Q, docs, "model", query_fn=lambda q, d: seen.append(len(d)) or "founder birthplace") == "founder birthplace"
    assert seen == [2]
    assert MH.next_hop_query(Q, docs, "model", query_fn=lambda q, d: "  ") == Q  # empty -> the question
    with pytest.raises(ValueError, match="query_fn"):
        MH.next_hop_query(Q, docs, "model")
    with pytest.raises(ValueError, match="unknown hop strategy 'magic'"):
        MH.next_hop_query(Q, docs, "magic")
    assert MH.next_hop_query(Q, [], "entities") == Q


def test_hops_dedupe_rank_and_carry_follow_up_query():
    m = FakeManager()
    rows = MH.multihop_retrieve(m, [Q], max_hops=2, top_k_per_hop=2, strategy="entities", show_progress=False)
    hop1 = [r for r in rows if r["hop"] == 1]
    hop2 = [r for r in rows if r["hop"] == 2]
    assert [r["rank"] for r in hop1] == [1, 2] and [r["rank"] for r in hop2] == [1, 2]
    assert hop1[0]["chunk_id"] == "acme#0" and hop1[0]["hop_query"] == Q
    assert hop2[0]["hop_query"].startswith(Q) and "Vora Delm" in hop2[0]["hop_query"]
    ids = [r["chunk_id"] for r in rows]
    assert len(ids) == len(set(ids))  # nothing retrieved twice
    assert {"vora#0"} <= set(ids)
    assert m.calls[1][1] == 4  # hop 2 fetches deeper (2 * k) to still have k unseen hits
    assert {"query_index", "hop", "hop_query", "rank", "chunk_index", "chunk_id", "doc_id", "score"} <= set(rows[0])


def test_early_stop_when_a_hop_brings_nothing_new():
    small = CHUNKS.iloc[:3].reset_index(drop=True)
    m = FakeManager(small)
    rows = MH.multihop_retrieve(m, [Q], max_hops=4, top_k_per_hop=2, strategy="titles", show_progress=False)
    assert sorted({r["hop"] for r in rows}) == [1, 2]  # 3 chunks: hop 2 gets the last one, hop 3 none
    assert len(m.calls) == 3  # hop 3 was tried, found nothing new, and no hop 4 was run
    none = MH.multihop_retrieve(FakeManager(), ["zzz unknown words"], max_hops=3, top_k_per_hop=2, show_progress=False)
    assert none == []


def test_batched_one_search_per_hop_and_order():
    m = FakeManager()
    qs = [Q, "Which company did Ana Rell found?", "What is Quix known for?"]
    rows = MH.multihop_retrieve(m, qs, max_hops=2, top_k_per_hop=1, batch_size=256, show_progress=False)
    assert len(m.calls) == 2 and len(m.calls[0][0]) == 3
    keys = [(r["query_index"], r["hop"], r["rank"]) for r in rows]
    assert keys == sorted(keys) and {r["query_index"] for r in rows} == {0, 1, 2}
    with pytest.raises(ValueError, match="max_hops"):
        MH.multihop_retrieve(m, qs, max_hops=0)


def test_precompute_table_from_multihop_rows(tmp_path):
    from nanochat.retrieval.precompute import COLUMNS, _multi_hop
    queries = [{"id": "q1", "question": Q}, {"id": "q2", "question": "What is Quix known for?"}]
    df = _multi_hop(FakeManager(), "test", queries, max_hops=2, top_k_per_hop=2, strategy="append")
    assert list(df.columns) == COLUMNS and set(df["query_id"]) == {"q1", "q2"}
    assert df.groupby(["query_id", "hop"])["rank"].apply(list).map(lambda r: r == list(range(1, len(r) + 1))).all()


@pytest.fixture(scope="module")
def tok():
    from nanochat.tokenizer import Tokenizer
    return Tokenizer.train_from_iterator(list(CHUNKS["content"]) * 3 + [Q] * 3, vocab_size=320)


def test_multi_hop_message_renders_and_masks_through_the_tokenizer(tok):
    from nanochat.rag.conversation import ChunkStore
    from nanochat.rag.multihop_data import build_multihop_examples, encode_multihop
    from nanochat.rag.conversation import message_documents
    rows = MH.multihop_retrieve(FakeManager(), [Q], max_hops=2, top_k_per_hop=2, show_progress=False)
    table = pd.DataFrame(rows).assign(split="train", query_id="q1")
    hops = MH.group_hops(table)["q1"]
    store = ChunkStore(CHUNKS)
    msg = MH.retrieval_message(hops, lambda c, s: store.doc(c, s, None))
    assert msg["multi_hop"] and [h["hop"] for h in msg["hops"]] == [1, 2]
    assert msg["hops"][0]["query"] == Q and len(msg["hops"][1]["documents"]) == 2
    query = {"id": "q1", "question": Q, "answers": ["Zentil"], "doc_ids": ["acme", "vora"], "hops": 2}
    examples, stats = build_multihop_examples([query], table, store, "train", top_k_per_hop=2, p_gold=1.0)
    assert stats["with_gold"] == 1
    ex = examples[0]
    docs = message_documents(ex["conversation"]["messages"][1])
    assert sorted(docs[n - 1]["id"].split("#")[0] for n in ex["cited"]) == ["acme", "vora"]
    ids, mask = encode_multihop(tok, ex["conversation"], ex["cited"], 1024, None)
    text = tok.decode(ids)
    assert text.count("<|hop_start|>") == 2 and text.count("<|hop_end|>") == 2 and "[4]" in text
    supervised = tok.decode([i for i, m in zip(ids, mask) if m])
    assert supervised.startswith(" Zentil") and supervised.endswith("<|assistant_end|>")
    # the answer's tokens are those of the word inside a document (leading space), so the copy head can point at them
    lead = tok.encode(" Zentil")
    assert [i for i, m in zip(ids, mask) if m][:len(lead)] == lead
    assert "Vora" not in supervised and Q not in supervised  # retrieved/prompt tokens carry no loss
    # without gold: every gold document is removed and the target is the abstention sentence
    ex0 = build_multihop_examples([query], table, store, "train", top_k_per_hop=2, p_gold=0.0)[0][0]
    docs0 = message_documents(ex0["conversation"]["messages"][1])
    assert not {"acme", "vora"} & {d["id"].split("#")[0] for d in docs0} and ex0["cited"] == []


def test_gold_missing_from_hops_is_inserted_into_its_hop():
    from nanochat.rag.conversation import ChunkStore
    from nanochat.rag.multihop_data import make_multihop_example
    from nanochat.rag.conversation import message_documents
    store = ChunkStore(CHUNKS)
    hops = [(1, Q, [("acme#0", "acme", 3.0), ("quix#0", "quix", 1.0)]), (2, "q2", [("other#0", "other", 1.0), ("zentil#0", "zentil", 0.5)])]
    query = {"id": "q", "question": Q, "answers": ["Zentil"], "doc_ids": ["acme", "vora"]}
    conv, cited = make_multihop_example(query, hops, store, 2, True, random.Random(0), None)
    hop2 = conv["messages"][1]["hops"][1]["documents"]
    assert "vora#0" in [d["id"] for d in hop2] and len(hop2) == 2
    docs = message_documents(conv["messages"][1])
    assert [docs[n - 1]["id"] for n in cited] == ["acme#0", "vora#0"]


def test_first_hop_view_answers_or_abstains_and_negatives_keep_the_bridge():
    from nanochat.rag.conversation import ChunkStore, message_documents
    from nanochat.rag.metrics import ABSTAIN_ANSWER
    from nanochat.rag.multihop_data import make_multihop_example
    store = ChunkStore(CHUNKS)
    hops = [(1, Q, [("acme#0", "acme", 3.0), ("quix#0", "quix", 1.0)]), (2, "q2", [("vora#0", "vora", 1.0)])]
    two_hop = {"id": "q", "question": Q, "answers": ["Zentil"], "doc_ids": ["acme", "vora"]}
    # first hop only: the answer's document is in hop 2, so the target is the abstention (hop on)
    conv, cited = make_multihop_example(two_hop, hops, store, 2, True, random.Random(0), None, view="first")
    assert len(conv["messages"][1]["hops"]) == 1 and conv["messages"][-1]["content"] == ABSTAIN_ANSWER and cited == []
    # a question the first hop answers: answered from it, citing it, whatever the RAFT draw
    one_hop = {"id": "q1", "question": "Who founded Acme?", "answers": ["Vora"], "doc_ids": ["acme"]}
    conv, cited = make_multihop_example(one_hop, hops, store, 2, False, random.Random(0), None, view="first")
    docs = message_documents(conv["messages"][1])
    assert conv["messages"][-1]["content"].startswith(" Vora [") and docs[cited[0] - 1]["id"] == "acme#0"
    # negatives that remove only the answer's document keep the bridge (hop 1) and abstain
    conv, cited = make_multihop_example(two_hop, hops, store, 2, False, random.Random(0), None, negatives="answer_doc")
    ids = [d["id"] for d in message_documents(conv["messages"][1])]
    assert "acme#0" in ids and "vora#0" not in ids and conv["messages"][-1]["content"] == ABSTAIN_ANSWER
