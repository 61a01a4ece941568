"""Retrievers trained on the KB's own questions: dense fine-tune, fusion tuning, reranker, splits without leakage.

    python -m pytest -q tests/test_retriever_tuning.py

The toy world: six one-sentence documents on unrelated topics, each named in questions only by an invented
code word ("quvex" = astronomy). Neither BM25 nor stock MiniLM can know the code words, so the base dense
model ranks at chance; a few fine-tuning steps on train questions must teach them, and held-out questions
(other phrasings) show whether it did.
"""
import json
import shutil

import numpy as np
import pytest

from nanochat.retrieval import pairs

TOPICS = {
    "astro": "Telescopes observe distant stars, planets and galaxies across the night sky.",
    "cook": "Simmer the onions in butter, then add flour and stock to make a thick sauce.",
    "sail": "The crew trimmed the mainsail and tacked the boat against the harbour wind.",
    "garden": "Plant tomato seedlings in spring and water the soil every morning.",
    "music": "The violinist tuned her strings before the orchestra began the symphony.",
    "code": "The compiler reports a syntax error when a bracket is left unclosed.",
}
WORDS = {"astro": "quvex", "cook": "blorin", "sail": "tazzle", "garden": "mirrow", "music": "zendak", "code": "plofin"}
TEMPLATES = ["what is {w}?", "tell me about {w}", "{w} explained", "facts on {w}", "i want to learn {w}",
             "a guide to {w}", "describe {w}", "{w} overview", "what do you know about {w}", "{w} basics"]
SPLIT = {"train": 0.6, "val": 0.2, "heldout": 0.2}
SPLIT_BENCH = {"train": 0.6, "val": 0.15, "heldout": 0.25}


def toy_rows():
    return [{"id": f"{k}-{i}", "question": t.format(w=w), "answers": [], "doc_ids": [k], "hops": 1}
            for k, w in WORDS.items() for i, t in enumerate(TEMPLATES)]


def recall_at_1(kb, rows, retriever="dense"):
    idx, _ = kb.retriever(retriever).search_batch([r["question"] for r in rows], 1)
    return float(np.mean([kb.chunks["doc_id"].iloc[i[0]] == r["doc_ids"][0] for i, r in zip(idx, rows)]))


@pytest.fixture(scope="module")
def toy_kb(tmp_path_factory):
    from nanochat.retrieval.kb import build_knowledge_base
    docs = [{"id": k, "title": "", "content": v} for k, v in TOPICS.items()]
    kb = build_knowledge_base(docs, tmp_path_factory.mktemp("toy") / "kb", ["hybrid"], show_progress=False)
    return docs, kb


@pytest.fixture(scope="module")
def tuned(toy_kb, tmp_path_factory):
    """Fine-tune on train, select on val, tune the fusion on val, recording every text a model or index sees."""
    from sentence_transformers import SentenceTransformer
    from nanochat.retrieval import embeddings
    from nanochat.retrieval.bm25 import BM25Retriever
    from nanochat.retrieval.dense import DenseRetriever
    from nanochat.retrieval.finetune import finetune_embedder
    from nanochat.retrieval.hybrid import tune_fusion
    docs, kb = toy_kb
    splits = pairs.split_queries(toy_rows(), SPLIT, seed=0)
    seen: set[str] = set()
    mp = pytest.MonkeyPatch()

    def spy(owner, name, text_arg):
        original = getattr(owner, name)

        def wrapper(self, *args, **kwargs):
            texts = args[text_arg] if len(args) > text_arg else next(iter(kwargs.values()))
            seen.update([texts] if isinstance(texts, str) else texts)
            return original(self, *args, **kwargs)
        mp.setattr(owner, name, wrapper)
    spy(SentenceTransformer, "encode", 0)
    spy(BM25Retriever, "search_batch", 0)
    spy(DenseRetriever, "search_batch", 0)
    tokenize = embeddings._tokenize
    mp.setattr(embeddings, "_tokenize", lambda model, texts: (seen.update(texts), tokenize(model, texts))[1])
    out = tmp_path_factory.mktemp("emb") / "embedder"
    try:
        record = finetune_embedder(kb, splits["train"], splits["val"], out, epochs=2, batch_size=6, lr=1e-4,
                                   hard_negatives=1, train_seq_length=32, show_progress=False)
        fusion = tune_fusion(kb, splits["val"])
    finally:
        mp.undo()
    return {"splits": splits, "record": record, "dir": out, "seen": seen, "fusion": fusion}


def test_split_is_deterministic_disjoint_and_by_document_when_asked(shared_data):
    from nanochat.data.sources.beir import load_qrels, load_queries, query_rows
    d = shared_data / "scifact"
    rows = query_rows(load_queries(d / "queries.jsonl"), load_qrels(d / "qrels" / "train.tsv"))
    a = pairs.split_queries(rows, SPLIT_BENCH, seed=0)  # bench/retriever_tuning.py's split
    b = pairs.split_queries(list(reversed(rows)), SPLIT_BENCH, seed=0)
    ids = {s: {r["id"] for r in v} for s, v in a.items()}
    assert ids == {s: {r["id"] for r in v} for s, v in b.items()}  # input order does not matter
    assert sum(map(len, ids.values())) == len(rows) == 809
    assert not (ids["train"] & ids["val"]) and not (ids["heldout"] & (ids["train"] | ids["val"]))
    assert [len(ids[s]) for s in ("train", "val", "heldout")] == [485, 122, 202]
    by_doc = pairs.split_queries(toy_rows(), SPLIT, seed=0, by="document")
    docs = {s: {r["doc_ids"][0] for r in v} for s, v in by_doc.items()}
    assert not (docs["train"] & docs["val"]) and not (docs["heldout"] & (docs["train"] | docs["val"]))


def test_finetune_learns_what_the_base_model_cannot(toy_kb, tuned):
    from nanochat.retrieval.kb import build_knowledge_base
    docs, kb = toy_kb
    heldout = tuned["splits"]["heldout"]
    base = recall_at_1(kb, heldout)
    rec = tuned["record"]
    kb2 = build_knowledge_base(docs, tuned["dir"].parent / "kb_tuned", ["dense"], model=str(tuned["dir"]),
                               show_progress=False)
    after = recall_at_1(kb2, heldout)
    print(f"held-out recall@1: stock {base:.2f} -> fine-tuned {after:.2f}; val nDCG@10 by epoch {rec['val_by_epoch']}")
    assert base <= 0.5, "the toy must be one the stock model fails"
    assert after >= 0.9 and rec["selected_epoch"] >= 1
    assert rec["val_by_epoch"][rec["selected_epoch"]] > rec["val_by_epoch"][0]
    # the KB records the model by content hash, and loads it back from its recorded place
    assert kb2.manifest["embedding"]["model"] == rec["model_id"] == json.loads((tuned["dir"] / "training.json").read_text())["model_id"]
    assert kb2.kb_id != kb.kb_id


def test_embedder_content_hash_is_the_kb_id(tmp_path, tuned):
    import pandas as pd
    from nanochat.retrieval.embeddings import model_id
    from nanochat.retrieval.kb import build_knowledge_base_from_chunks
    chunks = pd.DataFrame({"id": ["a#0", "b#0"], "doc_id": ["a", "b"], "title": ["", ""], "content": ["x y", "z w"]})
    chunks.to_parquet(tmp_path / "chunks.parquet", index=False)
    emb = np.eye(2, 4, dtype=np.float32)
    np.save(tmp_path / "emb.npy", emb)
    copy = shutil.copytree(tuned["dir"], tmp_path / "moved_copy")
    changed = shutil.copytree(tuned["dir"], tmp_path / "changed")
    (changed / "config.json").write_text((changed / "config.json").read_text().replace("}", ', "x": 1}', 1))

    def kb_id(model):
        info = {"model": model_id(model), "precision": "fp32", "model_path": str(model)}
        return build_knowledge_base_from_chunks(tmp_path / "chunks.parquet", tmp_path / f"kb_{abs(hash(str(model)))}",
                                                ["dense"], embeddings_path=tmp_path / "emb.npy", embedder_info=info,
                                                show_progress=False).kb_id
    stock, original = kb_id("all-MiniLM-L6-v2"), kb_id(tuned["dir"])
    assert model_id(tuned["dir"]).startswith("sha256:") and original != stock
    assert kb_id(copy) == original  # a path is not an identity: the same weights elsewhere, the same kb_id
    assert kb_id(changed) != original


def test_kb_embedded_by_a_local_model_is_named_by_its_hash_wherever_it_sits(toy_kb, tuned, tmp_path):
    """The one-step build (documents -> KB, the model given as a folder): the manifest, the dense settings and so
    the kb_id name the weights, not the folder; queries are still encoded by the recorded folder."""
    from nanochat.retrieval.kb import build_knowledge_base
    docs, stock = toy_kb
    copy = shutil.copytree(tuned["dir"], tmp_path / "elsewhere")
    a = build_knowledge_base(docs, tmp_path / "a", ["dense"], model=str(tuned["dir"]), show_progress=False)
    b = build_knowledge_base(docs, tmp_path / "b", ["dense"], model=str(copy), show_progress=False)
    assert a.kb_id == b.kb_id != stock.kb_id
    assert str(tmp_path) not in json.dumps(a.manifest["identity"]) and str(tuned["dir"]) not in json.dumps(a.manifest["identity"])
    assert a.manifest["retrievers"]["dense"]["settings"]["model"] == tuned["record"]["model_id"]
    assert b.retriever("dense").settings["model"] == str(copy.resolve())


def test_no_heldout_question_reaches_selection(tuned):
    splits, seen = tuned["splits"], tuned["seen"]
    heldout = {r["question"] for r in splits["heldout"]}
    assert {r["question"] for r in splits["train"]} <= seen and {r["question"] for r in splits["val"]} <= seen
    assert not heldout & seen, f"held-out questions used in training or selection: {sorted(heldout & seen)[:3]}"
    assert tuned["record"]["data"]["train_questions"] == len(splits["train"])
    assert tuned["fusion"]["tuned"]["questions"] == len(splits["val"])


def test_tune_fusion_follows_the_retriever_that_works(toy_kb, tmp_path):
    """Questions that name a word of their document: BM25 finds more of them than stock dense, so the tuned
    weight keeps BM25 in (below 1, dense alone); it is recorded in the manifest and changes the kb_id."""
    import shutil as sh
    from nanochat.retrieval.hybrid import apply_tuned_fusion
    from nanochat.retrieval.kb import KnowledgeBase
    _, kb = toy_kb
    kb = KnowledgeBase.load(sh.copytree(kb.path, tmp_path / "kb"))
    words = {k: v.split()[-2] for k, v in TOPICS.items()}  # one word of the document: BM25 0.90, dense 0.82
    val = [{"id": f"v{k}", "question": f"{WORDS[k]} {w}", "doc_ids": [k]} for k, w in words.items()]
    new = apply_tuned_fusion(kb, val)
    h = new.manifest["retrievers"]["hybrid"]["settings"]
    curve = {float(k): v for k, v in h["tuned"]["scores"].items()}
    grid = sorted(curve)
    smooth = {w: np.mean([curve[u] for u in grid[max(0, i - 1):i + 2]]) for i, w in enumerate(grid)}
    assert h["dense_weight"] < 1.0 and curve[h["dense_weight"]] > curve[1.0]
    assert smooth[h["dense_weight"]] >= max(smooth.values()) - 1e-9  # the best neighbourhood, not a lone peak
    assert new.kb_id != kb.kb_id and new.retriever("hybrid").settings["dense_weight"] == h["dense_weight"]


def test_rerank_reorders_within_the_candidates_only():
    from nanochat.retrieval.rerank import RerankedRetriever, rerank_rows
    rng = np.random.default_rng(0)
    idx = np.array([[5, 3, 9, 1, 7, 2], [4, 8, -1, -1, -1, -1]])
    scores = np.linspace(1, 0, 12, dtype=np.float32).reshape(2, 6)
    texts = [f"passage {i}" for i in range(10)]
    new_idx, new_scores = rerank_rows(lambda p, bs: rng.normal(size=len(p)), ["q1", "q2"], idx, scores, texts, depth=4)
    assert sorted(new_idx[0, :4]) == sorted(idx[0, :4]) and list(new_idx[0, 4:]) == list(idx[0, 4:])
    assert sorted(new_idx[1, :2]) == sorted(idx[1, :2]) and list(new_idx[1, 2:]) == [-1] * 4
    assert np.all(np.diff(new_scores[0, :4]) <= 0)  # reranked part sorted by the new scores

    class First:
        def search_batch(self, queries, k):
            return idx[:len(queries), :k], scores[:len(queries), :k]
    r = RerankedRetriever(First(), lambda p, bs: np.array([len(t) + int(t[-1]) for _, t in p]), texts, depth=6)
    got, _ = r.search_batch(["q1", "q2"], 3)
    assert got.shape == (2, 3) and list(got[0]) == [9, 7, 5] and set(got[0]) <= set(idx[0])


def test_fusion_weight_blends_the_cross_encoder_order_with_the_first_stage():
    from nanochat.retrieval.rerank import fused_order, rerank_rows
    logits = np.array([0.1, 0.5, 0.9])  # the cross-encoder reverses the first stage's order
    assert list(fused_order(logits, 1.0)[0]) == [2, 1, 0] and list(fused_order(logits, 0.0)[0]) == [0, 1, 2]
    assert list(fused_order(logits, 0.5)[0]) == [0, 2, 1]  # a tie between the two tops keeps the first stage's
    assert list(fused_order(np.array([0.5, 0.4, 0.9]), 0.5)[0]) == [0, 2, 1]  # the last moves up one place
    assert list(fused_order(np.array([0.5, 0.4, 0.9]), 1.0)[0]) == [2, 0, 1]
    calls = []
    idx, scores = np.array([[3, 1, 2]]), np.array([[3.0, 2.0, 1.0]], np.float32)
    got = rerank_rows(lambda p, bs: calls.append(p) or logits, ["q"], idx, scores, ["a", "b", "c", "d"], 3, weight=0)
    assert not calls and (got[0] == idx).all() and (got[1] == scores).all()  # weight 0: no cross-encoder pass


def test_reranker_trains_on_the_pairs_and_precompute_applies_it(toy_kb, tuned, tmp_path):
    from nanochat.data.queries import write_queries
    from nanochat.retrieval.precompute import precompute_retrieval
    from nanochat.retrieval.rerank import train_reranker
    _, kb = toy_kb
    splits = tuned["splits"]
    rec = train_reranker(kb, splits["train"], splits["val"], tmp_path / "reranker", epochs=1, batch_size=6, lr=1e-4,
                         hard_negatives=1, max_length=48, val_depth=6, show_progress=False)
    assert rec["selected_epoch"] == 1 and (tmp_path / "reranker" / "training.json").is_file()
    weight = json.loads((tmp_path / "reranker" / "rerank.json").read_text())["weight"]
    curve = rec["fusion"]["val_by_weight"]
    assert weight == rec["fusion"]["weight"] and curve[str(weight)] == max(curve.values()) == rec["val_by_epoch"][1]
    assert curve["0.0"] == rec["val_by_epoch"][0]  # weight 0 is the first stage's own order
    from nanochat.retrieval.embeddings import model_id
    other = shutil.copytree(tmp_path / "reranker", tmp_path / "reranker_w1")
    (other / "rerank.json").write_text(json.dumps({"weight": 1.0 if weight != 1.0 else 0.5, "rrf_k": 10}))
    assert model_id(other) != rec["model_id"]  # the fusion weight is part of the reranker's identity
    write_queries(tmp_path / "q.jsonl", splits["heldout"])
    plain = precompute_retrieval(kb.path, "dense", {"test": tmp_path / "q.jsonl"}, 6, tmp_path / "plain.parquet")
    reranked = precompute_retrieval(kb.path, "dense", {"test": tmp_path / "q.jsonl"}, 6, tmp_path / "rr.parquet",
                                    rerank_model=tmp_path / "reranker", rerank_depth=6)
    assert reranked["key"]["rerank"] == {"model": rec["model_id"], "depth": 6} and "rerank" not in plain["key"]
    import pandas as pd
    a, b = pd.read_parquet(tmp_path / "plain.parquet"), pd.read_parquet(tmp_path / "rr.parquet")
    for q, g in a.groupby("query_id"):
        assert set(g["chunk_id"]) == set(b[b["query_id"] == q]["chunk_id"])  # same candidates, new order
