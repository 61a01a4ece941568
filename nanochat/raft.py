"""RAFT-style training examples from precomputed retrieval, tokenized into shards.

RAFT (Zhang et al. 2024) trains the model to read *imperfect* retrieval: with probability
p_gold the gold document is in the retrieval message (inserted over the lowest-ranked hit if
retrieval missed it) and the target is the answer with `[n]` citations; otherwise the message
holds only hard negatives (our own retrieval, gold removed) and the target is the fixed
abstention sentence ABSTAIN_ANSWER. Document order is shuffled so position carries no signal.

Choices: `max_doc_length` counts whitespace words (tokenizer-independent, so one dataset
recipe means the same thing for every tokenizer); the tokenizer then fits `max_seq_len` by
shortening/dropping documents from the end, and an example whose cited document would be cut
is retried with shorter documents (halving the word budget) before it is skipped.

Shards: `{split}_{i:05d}.npz` with ids (int32, concatenated), mask (uint8), offsets (int64,
n+1); `manifest.json` is written last and lists them.

    python -m nanochat.raft --knowledge_base KB --retrieval retrieval.parquet --queries_train q.jsonl \
        --queries_val v.jsonl --tokenizer TOKDIR --top_k 5 --p_gold 0.8 --output DATASET_DIR
"""
from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from nanochat.cli import ArgumentParser
from nanochat.common import atomic_path, atomic_write_json, sha256_file, sha256_text
from nanochat.chunking import split_sentences
from nanochat.qa_metrics import ABSTAIN_ANSWER, ANSWER_MARKER, contains_answer
from nanochat.queries import load_queries

log = logging.getLogger(__name__)

SYSTEM_PROMPT = ("Answer the question using only the retrieved documents and cite them as [n]. "
                 "If they do not contain the answer, say so.")
MIN_DOC_WORDS = 16  # shortest document budget tried before an example is skipped


def truncate_words(text: str, max_words: int | None) -> str:
    words = text.split()
    return text if max_words is None or len(words) <= max_words else " ".join(words[:max_words])


class ChunkStore:
    """Chunk rows by chunk id and by document id (the KB's chunk table, read once)."""

    def __init__(self, chunks: pd.DataFrame):
        cols = [c for c in ("id", "doc_id", "title", "content", "source") if c in chunks.columns]
        self.rows = {r["id"]: r for r in chunks[cols].to_dict("records")}
        self.by_doc: dict[str, list[str]] = {}
        for cid, r in self.rows.items():
            self.by_doc.setdefault(r["doc_id"], []).append(cid)

    def doc(self, chunk_id: str, score: float, max_words: int | None) -> dict:
        r = self.rows[chunk_id]
        return {"id": chunk_id, "title": r.get("title") or "", "content": truncate_words(r["content"], max_words),
                "source": r.get("source"), "score": round(float(score), 4)}

    def gold_chunk(self, doc_id: str, answers: list[str] | None) -> str | None:
        """The chunk of doc_id that holds an answer (first one), else its first chunk."""
        cids = self.by_doc.get(doc_id, [])
        for cid in cids if answers else []:
            if contains_answer(self.rows[cid]["content"], answers):
                return cid
        return cids[0] if cids else None


def hits_by_query(table: pd.DataFrame, split: str) -> dict[str, list[tuple[str, str, float]]]:
    """query_id -> [(chunk_id, doc_id, score)] in (hop, rank) order, one split."""
    t = table[table["split"] == split].sort_values(["query_id", "hop", "rank"], kind="stable")
    out: dict[str, list] = {}
    for qid, cid, did, s in zip(t["query_id"], t["chunk_id"], t["doc_id"], t["score"]):
        out.setdefault(qid, []).append((cid, did, float(s)))
    return out


def build_conversation(question: str, documents: list[dict], answer: str | None = None,
                       system: str = SYSTEM_PROMPT) -> dict:
    """The tokenizer's conversation shape; answer=None gives an evaluation prompt."""
    messages = [{"role": "system", "content": system}, {"role": "retrieval", "documents": documents},
                {"role": "user", "content": question}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return {"messages": messages}


def answer_target(answer: str, cited: list[int], quotes: list[str] | None = None) -> str:
    """Assistant text for an answer: a leading space makes the answer tokenize exactly as it does inside a
    document (" Hilluxlom" is one BPE token, "Hilluxlom" is two others), so answering is a literal copy.

    With quotes (RAFT's chain of thought): the supporting sentences first, verbatim, then `Answer: <answer>`.
    Each step is then a copy the model can find by matching what it has just written against the documents,
    instead of one jump from the question to the answer span; evaluation scores the part after `Answer:`.
    """
    cites = " ".join(f"[{n}]" for n in cited)
    if quotes:
        return " " + " ".join(quotes) + f" {cites}\n{ANSWER_MARKER} {answer.strip()} {cites}"
    return f" {answer.strip()} {cites}"


def supporting_quotes(docs: list[dict], cited: list[int], answers: list[str]) -> list[str] | None:
    """Verbatim sentences that carry the answer, one per cited document in hop order, or None.

    The last document's sentence is the first one holding the answer; an earlier (bridge) document's is the
    first one naming the next document's title. None when any of them cannot be found in the shown text.
    """
    quotes = []
    for i, n in enumerate(cited):
        doc = docs[n - 1]
        if i == len(cited) - 1:
            found = [x for x in split_sentences(doc["content"]) if contains_answer(x, answers)]
        else:
            nxt = docs[cited[i + 1] - 1]["title"].removeprefix("The ").strip()
            found = [x for x in split_sentences(doc["content"]) if nxt and nxt in x]
        if not found:
            return None
        quotes.append(found[0])
    return quotes


def _dedupe(hits):
    seen, out = set(), []
    for h in hits:
        if h[0] not in seen:
            seen.add(h[0])
            out.append(h)
    return out


def make_example(query: dict, hits: list, store: ChunkStore, top_k: int, with_gold: bool,
                 rng: random.Random, max_doc_length: int | None, answer_style: str = "short"):
    """One RAFT example -> (conversation, cited doc positions) or None when it cannot be built."""
    answers = query["answers"]
    if not answers:
        return None
    hits = _dedupe(hits)
    gold = list(query.get("doc_ids") or [])
    if not gold:  # user queries without gold ids: retrieved chunks that hold the answer count as gold
        gold = list(dict.fromkeys(d for c, d, _ in hits[:top_k] if contains_answer(store.rows[c]["content"], answers)))
        if not gold:
            return None
    if with_gold:
        chosen = hits[:top_k]
        needed = []  # (doc_id, chunk_id) the answer cites, in hop order
        for i, g in enumerate(gold):
            want_answer = answers if i == len(gold) - 1 else None
            present = [c for c, d, _ in chosen if d == g and (want_answer is None or contains_answer(store.rows[c]["content"], answers))]
            cid = present[0] if present else store.gold_chunk(g, want_answer)
            if cid is None:
                return None  # gold document not in the KB
            needed.append(cid)
        for cid in needed:
            if cid not in [c for c, _, _ in chosen]:
                # replace the lowest-ranked hit that is not itself needed
                drop = next((j for j in range(len(chosen) - 1, -1, -1) if chosen[j][0] not in needed), None)
                entry = (cid, store.rows[cid]["doc_id"], 0.0)
                if drop is None or len(chosen) < top_k:
                    chosen.append(entry)
                else:
                    chosen[drop] = entry
    else:
        chosen = [h for h in hits if h[1] not in gold][:top_k]
        needed = []
    rng.shuffle(chosen)
    docs = [store.doc(c, s, max_doc_length) for c, _, s in chosen]
    order = [c for c, _, _ in chosen]
    cited = [order.index(c) + 1 for c in needed]
    if not with_gold:
        target = ABSTAIN_ANSWER
    else:
        quotes = supporting_quotes(docs, cited, answers) if answer_style == "quote" else None
        target = answer_target(answers[0], cited, quotes)
    return build_conversation(query["question"], docs, target), cited


def extra_turns(chosen_docs: list[dict], store: "ChunkStore", others: list[dict], max_extra: int,
                answer_style: str = "short") -> tuple[list, list]:
    """Further questions answerable (or provably not) from the same documents -> ([(q, a)], cited positions).

    Denser supervision: one forward pass carries several copy targets instead of one ~4-token answer.
    A question is used with an answer when all its gold documents are shown and the last one holds the
    answer; with the abstention sentence when none of its gold documents is shown; otherwise skipped.
    """
    shown = {store.rows[d["id"]]["doc_id"]: i + 1 for i, d in enumerate(chosen_docs)}
    turns, cited = [], []
    for q in others:
        if len(turns) >= max_extra:
            break
        gold = list(q.get("doc_ids") or [])
        if not gold or not q.get("answers"):
            continue
        if all(g in shown for g in gold):
            last = chosen_docs[shown[gold[-1]] - 1]["content"]
            if not contains_answer(last, q["answers"]):
                continue
            pos = [shown[g] for g in gold]
            quotes = supporting_quotes(chosen_docs, pos, q["answers"]) if answer_style == "quote" else None
            turns.append((q["question"], answer_target(q["answers"][0], pos, quotes)))
            cited += pos
        elif not any(g in shown for g in gold):
            turns.append((q["question"], ABSTAIN_ANSWER))
    return turns, cited


def _shape(answer: str) -> tuple:
    """Coarse answer type (number / capitalised name / lower-case word, and word count) for substitutes."""
    a = answer.strip()
    return ("num" if a.isdigit() else "cap" if a[:1].isupper() else "low", len(a.split()))


def counterfactual(conv: dict, pool: dict, rng: random.Random) -> dict:
    """The conversation with each answered turn's answer replaced, in documents and answers alike, by another
    answer of the same shape. Why: the model cannot recall a training fact it was never told consistently,
    so reading (copying from) the document is the only way to lower the loss -- what held-out entities need."""
    msgs = conv["messages"]
    answers = {m["content"].strip().rsplit(" [", 1)[0].split(" [")[0].strip() for m in msgs
               if m["role"] == "assistant" and m["content"] != ABSTAIN_ANSWER}
    subs = {}
    for a in sorted(answers):
        options = [x for x in pool.get(_shape(a), ()) if x != a and x not in answers]
        if options:
            subs[a] = rng.choice(options)
    if not subs:
        return conv
    pat = re.compile(r"(?<!\w)(" + "|".join(re.escape(a) for a in sorted(subs, key=len, reverse=True)) + r")(?!\w)")
    swap = lambda text: pat.sub(lambda m: subs[m.group(1)], text)
    out = []
    for m in msgs:
        if m["role"] == "retrieval":
            m = {**m, "documents": [{**d, "title": swap(d["title"]), "content": swap(d["content"])}
                                   for d in m["documents"]]}
        elif m["role"] == "assistant":
            m = {**m, "content": swap(m["content"])}
        out.append(m)
    return {**conv, "messages": out}


def build_examples(queries: list[dict], table: pd.DataFrame, chunks: pd.DataFrame, split: str, top_k: int = 5,
                   p_gold: float = 0.8, max_doc_length: int | None = 300, seed: int = 0,
                   turns: int = 1, p_counterfactual: float = 0.0, answer_style: str = "short",
                   turn_scope: str = "entity") -> tuple[list, dict]:
    """RAFT conversations for one split -> (examples, stats). Seeded per query (stable under edits).

    turns > 1: each conversation also asks up to turns-1 other questions of the same split -- multi-turn RAFT --
    answered from (or abstaining on) the same retrieved documents. turn_scope "entity": questions about the same
    entity (its `entity` field, else its first gold document); "shown": questions about any shown document. p_counterfactual: share of examples whose answers are swapped
    for other answers of the same shape in documents and targets alike (see `counterfactual`).
    """
    if not 0.0 <= p_gold <= 1.0:
        raise ValueError(f"p_gold={p_gold}: must be within [0, 1]")
    store = chunks if isinstance(chunks, ChunkStore) else ChunkStore(chunks)
    by_q = hits_by_query(table, split)
    examples, stats = [], {"n_queries": len(queries), "with_gold": 0, "abstain": 0, "skipped": 0, "no_retrieval": 0,
                           "extra_turns": 0, "counterfactual": 0}
    pool: dict[tuple, list[str]] = {}
    for a in sorted({q["answers"][0].strip() for q in queries if q.get("answers")}) if p_counterfactual > 0 else []:
        pool.setdefault(_shape(a), []).append(a)
    by_entity: dict[str, list[dict]] = {}  # entity (or first gold document) -> its questions
    by_doc: dict[str, list[dict]] = {}  # gold document -> questions it helps answer
    for q in queries if turns > 1 else []:
        key = q.get("entity") or ((q.get("doc_ids") or [None])[0])
        if key is not None:
            by_entity.setdefault(key, []).append(q)
        for g in q.get("doc_ids") or []:
            by_doc.setdefault(g, []).append(q)
    for q in queries:
        rng = random.Random(f"{seed}:{split}:{q['id']}")
        hits = by_q.get(q["id"], [])
        if not hits:
            stats["no_retrieval"] += 1
        with_gold = rng.random() < p_gold
        made = make_example(q, hits, store, top_k, with_gold, rng, max_doc_length, answer_style)
        if made is None:
            stats["skipped"] += 1
            continue
        conv, cited = made
        if turns > 1:
            if turn_scope == "entity":
                key = q.get("entity") or ((q.get("doc_ids") or [None])[0])
                others = [o for o in by_entity.get(key, []) if o["id"] != q["id"]]
            else:  # any question about a shown document: the turns must tell the documents apart
                shown = dict.fromkeys(store.rows[d["id"]]["doc_id"] for d in conv["messages"][1]["documents"])
                others = list({o["id"]: o for g in shown for o in by_doc.get(g, []) if o["id"] != q["id"]}.values())
            rng.shuffle(others)
            more, more_cited = extra_turns(conv["messages"][1]["documents"], store, others, turns - 1, answer_style)
            conv["messages"] += [m for qq, a in more for m in ({"role": "user", "content": qq},
                                                               {"role": "assistant", "content": a})]
            cited = sorted(set(cited) | set(more_cited))
            stats["extra_turns"] += len(more)
        if with_gold and p_counterfactual > 0 and rng.random() < p_counterfactual:
            conv = counterfactual(conv, pool, rng)
            stats["counterfactual"] += 1
        stats["with_gold" if with_gold else "abstain"] += 1
        examples.append({"query_id": q["id"], "with_gold": with_gold, "cited": cited, "conversation": conv})
    n = stats["with_gold"] + stats["abstain"]
    stats["p_gold_actual"] = round(stats["with_gold"] / n, 4) if n else None
    return examples, stats


def build_eval_conversations(queries: list[dict], table: pd.DataFrame, chunks: pd.DataFrame, split: str = "test",
                             top_k: int = 5, max_doc_length: int | None = 300) -> list[tuple[dict, dict]]:
    """(query, prompt conversation without an answer) from the precomputed top_k, as retrieved (no gold insertion)."""
    store = chunks if isinstance(chunks, ChunkStore) else ChunkStore(chunks)
    by_q = hits_by_query(table, split)
    out = []
    for q in queries:
        docs = [store.doc(c, s, max_doc_length) for c, _, s in _dedupe(by_q.get(q["id"], []))[:top_k]]
        out.append((q, build_conversation(q["question"], docs)))
    return out


# -----------------------------------------------------------------------------
# General conversations (keep chat ability); never given retrieved documents

def _find_smoltalk() -> list[Path]:
    import os
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    files = []
    for name in ("datasets--HuggingFaceTB--smol-smoltalk", "datasets--HuggingFaceTB--smoltalk"):
        files += sorted((home / "hub" / name).glob("snapshots/*/**/train-*.parquet"))
    return files


def _valid_chat(conv, where: str) -> dict:
    msgs = conv.get("messages") if isinstance(conv, dict) else None
    if not isinstance(msgs, list) or not msgs:
        raise ValueError(f"{where}: messages: expected a non-empty list")
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: messages[{j}]: expected role system/user/assistant with string content")
    if not any(m["role"] == "assistant" for m in msgs):
        raise ValueError(f"{where}: messages: no assistant message to learn from")
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in msgs]}


def load_base_conversations(base_tasks: str | None, n: int, seed: int) -> list[dict]:
    """Up to n general conversations. base_tasks: None/"auto" (SmolTalk if cached, else warn and skip),
    "smoltalk" (must be cached locally), or comma-separated local JSONL files of {"messages": [...]}."""
    if n <= 0 or base_tasks in ("", "none"):
        return []
    convs = []
    for task in (base_tasks or "auto").split(","):
        task = task.strip()
        if task in ("auto", "smoltalk"):
            files = _find_smoltalk()
            if not files:
                if task == "smoltalk":
                    raise FileNotFoundError("base task 'smoltalk' requested but the HuggingFace dataset is not cached "
                                            "locally (no network downloads here). Pass local JSONL files with "
                                            "--base_tasks a.jsonl,b.jsonl or --base_tasks none")
                log.warning("SmolTalk is not cached locally: continuing without general conversations")
                continue
            df = pd.read_parquet(files[0], columns=["messages"])
            convs += [_valid_chat({"messages": list(m)}, f"{files[0]}:{i}") for i, m in enumerate(df["messages"][: 4 * n])]
        else:
            with open(task, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            obj = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise ValueError(f"{task}:{lineno}: json: invalid JSON ({e.msg})") from None
                        convs.append(_valid_chat(obj, f"{task}:{lineno}"))
    random.Random(seed).shuffle(convs)
    return convs[:n]


# -----------------------------------------------------------------------------
# Tokenize and shard

def encode_example(tokenizer, conversation: dict, cited: list[int], max_seq_len: int, max_doc_length: int | None):
    """(ids, mask) fitting max_seq_len with every cited document intact, or None.

    Retries with halved document word budgets when the tokenizer had to cut a cited document; a multi-turn
    conversation first gives up its extra turns, last first.
    """
    msgs = conversation["messages"]
    n_assistant = sum(m["role"] == "assistant" for m in msgs)
    while n_assistant > 1:
        ids, mask, info = tokenizer.render_conversation(conversation, max_tokens=max_seq_len, on_overflow="report")
        if not info["cut_tokens"] and not info["dropped_docs"] and not info["shortened_docs"]:
            return ids, mask  # extra turns are only worth keeping with every document whole
        msgs = msgs[:-2]  # drop the last user/assistant pair
        conversation, n_assistant = {**conversation, "messages": msgs}, n_assistant - 1
    lengths = [len(d["content"].split()) for m in conversation["messages"] if m["role"] == "retrieval"
               for d in m["documents"]]
    words = max_doc_length or max(lengths, default=None)
    conv = conversation
    while True:
        ids, mask, info = tokenizer.render_conversation(conv, max_tokens=max_seq_len, on_overflow="report")
        cut = set(info["dropped_docs"]) | {int(k) for k in info["shortened_docs"]}
        if not info["cut_tokens"] and not (cut & set(cited)):
            return ids, mask
        if info["cut_tokens"] or words is None or words <= MIN_DOC_WORDS:
            return None
        words = max(MIN_DOC_WORDS, words // 2)
        conv = {"messages": [m if m["role"] != "retrieval" else
                             {**m, "documents": [{**d, "content": truncate_words(d["content"], words)} for d in m["documents"]]}
                             for m in conversation["messages"]]}


def write_shards(encoded: list[tuple[list[int], list[int]]], output_dir, split: str,
                 examples_per_shard: int = 4096) -> list[str]:
    """Write `{split}_{i:05d}.npz` shards atomically; returns their file names."""
    output_dir = Path(output_dir)
    names = []
    for s, start in enumerate(range(0, max(len(encoded), 1), examples_per_shard)):
        part = encoded[start:start + examples_per_shard]
        lengths = np.array([len(ids) for ids, _ in part], np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = np.fromiter((t for x, _ in part for t in x), np.int32, count=int(offsets[-1]))
        mask = np.fromiter((t for _, m in part for t in m), np.uint8, count=int(offsets[-1]))
        name = f"{split}_{s:05d}.npz"
        with atomic_path(output_dir / name) as tmp, open(tmp, "wb") as f:
            np.savez(f, ids=ids, mask=mask, offsets=offsets)
        names.append(name)
    return names


class ShardDataset:
    """Examples of one split as (ids int32, mask uint8) numpy views; len() and [i]."""

    def __init__(self, paths: list[Path]):
        ids, masks, offsets, base = [], [], [np.zeros(1, np.int64)], 0
        for p in paths:
            with np.load(p, allow_pickle=False) as z:
                ids.append(z["ids"])
                masks.append(z["mask"])
                offsets.append(z["offsets"][1:] + base)
                base += int(z["offsets"][-1])
        self.ids = np.concatenate(ids) if ids else np.zeros(0, np.int32)
        self.mask = np.concatenate(masks) if masks else np.zeros(0, np.uint8)
        self.offsets = np.concatenate(offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(f"example {i} out of range for {len(self)} examples")
        i %= len(self)
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.ids[a:b], self.mask[a:b]


def load_dataset_shards(dataset_dir, split: str) -> ShardDataset:
    """The split's examples, from the shards listed in manifest.json (stale files are ignored)."""
    d = Path(dataset_dir)
    mp = d / "manifest.json"
    if not mp.is_file():
        raise FileNotFoundError(f"{mp} not found: the dataset is missing or incomplete (run python -m nanochat.raft)")
    manifest = json.loads(mp.read_text(encoding="utf-8"))
    if split not in manifest["splits"]:
        raise KeyError(f"{d}: no split {split!r}; available: {sorted(manifest['splits'])}")
    return ShardDataset([d / n for n in manifest["splits"][split]["shards"]])


def rank_slice(n: int, rank: int, world_size: int) -> range:
    """Indices for one DDP rank: strided, every rank the same count (the n % world_size tail is dropped)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} outside world_size={world_size}")
    return range(rank, n - n % world_size, world_size)


def tokenizer_hash(tokenizer_dir) -> str:
    d = Path(tokenizer_dir)
    return sha256_text("".join(f"{p.relative_to(d)}:{sha256_file(p)}\n" for p in sorted(d.rglob("*")) if p.is_file()))


def build_dataset(kb_chunks: pd.DataFrame, table: pd.DataFrame, query_files: dict, tokenizer, output_dir,
                  top_k: int = 5, p_gold: float = 0.8, max_seq_len: int = 512, max_doc_length: int | None = 300,
                  seed: int = 0, base_tasks: str | None = None, base_mix: float = 0.0,
                  examples_per_shard: int = 4096, provenance: dict | None = None, turns: int = 1,
                  p_counterfactual: float = 0.0, answer_style: str = "short", turn_scope: str = "entity") -> dict:
    """Build, tokenize and shard every split in query_files; write manifest.json last; return it.

    turns applies to the train split only: validation stays one question per conversation, the evaluation format.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # an interrupted rebuild must not look complete
    store = ChunkStore(kb_chunks)
    splits = {}
    for split, path in query_files.items():
        examples, stats = build_examples(load_queries(path), table, store, split, top_k, p_gold, max_doc_length, seed,
                                         turns if split == "train" else 1,
                                         p_counterfactual if split == "train" else 0.0, answer_style, turn_scope)
        encoded, too_long = [], 0
        for ex in tqdm(examples, desc=f"tokenize {split}", unit="ex"):
            enc = encode_example(tokenizer, ex["conversation"], ex["cited"], max_seq_len, max_doc_length)
            if enc is None:
                too_long += 1
            else:
                encoded.append(enc)
        if split == "train" and base_mix > 0:
            base = load_base_conversations(base_tasks, int(round(base_mix * len(encoded))), seed)
            base_enc = [e for e in (tokenizer.render_conversation(c, max_tokens=max_seq_len, on_overflow="report")
                                    for c in base) if not e[2]["cut_tokens"]]
            encoded += [(i, m) for i, m, _ in base_enc]
            random.Random(f"{seed}:mix").shuffle(encoded)
            stats["base_conversations"] = len(base_enc)
        for old in out.glob(f"{split}_*.npz"):
            old.unlink()
        stats.update(too_long=too_long, n_examples=len(encoded), n_tokens=int(sum(len(i) for i, _ in encoded)),
                     n_supervised_tokens=int(sum(sum(m) for _, m in encoded)),
                     shards=write_shards(encoded, out, split, examples_per_shard), queries_sha256=sha256_file(path))
        splits[split] = stats
    manifest = {"format": "nanochat-raft-v1", "splits": splits, "seed": seed, "top_k": top_k, "p_gold": p_gold,
                "max_seq_len": max_seq_len, "max_doc_length": max_doc_length, "turns": turns, "p_counterfactual": p_counterfactual, "max_doc_length_unit": "words",
                "abstain_answer": ABSTAIN_ANSWER, "system_prompt": SYSTEM_PROMPT, **(provenance or {})}
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="Build RAFT training examples from precomputed retrieval and shard them.")
    p.add_argument("--knowledge_base", required=True, help="KB directory (for chunk texts)")
    p.add_argument("--retrieval", required=True, help="retrieval table from python -m nanochat.precompute")
    p.add_argument("--queries_train", required=True, help="training queries JSONL")
    p.add_argument("--queries_val", default=None, help="validation queries JSONL (optional)")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory")
    p.add_argument("--top_k", type=int, default=5, help="documents in each retrieval message")
    p.add_argument("--p_gold", type=float, default=0.8, help="probability the gold document is present")
    p.add_argument("--max_seq_len", type=int, default=512, help="tokens per example (documents shortened first)")
    p.add_argument("--max_doc_length", type=int, default=300, help="words per document before tokenizing; -1 = no limit")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--base_tasks", default="auto", help="auto | smoltalk | none | comma-separated JSONL chat files")
    p.add_argument("--base_mix", type=float, default=0.0, help="general conversations per RAG example in train (0 = none)")
    p.add_argument("--turns", type=int, default=1, help="questions per training conversation (same entity, same documents)")
    p.add_argument("--turn_scope", default="entity", choices=["entity", "shown"],
                   help="extra turns ask about the same entity, or about any shown document")
    p.add_argument("--p_counterfactual", type=float, default=0.0,
                   help="share of train examples whose answers are swapped (documents and targets) to force copying")
    p.add_argument("--answer_style", default="short", choices=["short", "quote"],
                   help="short: ' <answer> [n]'; quote: the supporting sentences verbatim, then 'Answer: <answer> [n]'")
    p.add_argument("--examples_per_shard", type=int, default=4096, help="examples per .npz shard")
    p.add_argument("--output", required=True, help="dataset directory")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from nanochat.precompute import load_precomputed
    from nanochat.retrieval.kb import KnowledgeBase
    from nanochat.tokenizer import Tokenizer
    kb = KnowledgeBase.load(args.knowledge_base)
    table = load_precomputed(args.retrieval)
    files = {"train": args.queries_train, **({"val": args.queries_val} if args.queries_val else {})}
    provenance = {"kb_id": kb.kb_id, "retrieval_table_sha256": sha256_file(args.retrieval),
                  "tokenizer_sha256": tokenizer_hash(args.tokenizer)}
    m = build_dataset(kb.chunks, table, files, Tokenizer.from_directory(args.tokenizer), args.output, args.top_k,
                      args.p_gold, args.max_seq_len, None if args.max_doc_length < 0 else args.max_doc_length,
                      args.seed, args.base_tasks, args.base_mix, args.examples_per_shard, provenance, args.turns,
                      args.p_counterfactual, args.answer_style, args.turn_scope)
    for split, s in m["splits"].items():
        print(f"{split}: {s['n_examples']} examples, {s['n_tokens']} tokens, p_gold actual {s['p_gold_actual']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
