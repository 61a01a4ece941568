"""REFRAG training pieces: multi-hop RAFT examples, the reward phase, and multi-hop evaluation.

REFRAG here is the user guide's recursive RAG: multi-hop retrieval (nanochat.multihop) plus a
reward-driven phase, not the 2025 chunk-compression method of the same name.

Warm-up data: like nanochat.raft, but the retrieval message is the guide's multi_hop form with the
precomputed hops. With probability p_gold every gold document is present (a missing one replaces the
lowest-ranked, uncited hit of the hop it belongs to) and the target is the answer with its [n]
citations (numbered across hops, as the tokenizer numbers them); otherwise gold documents are removed
and the target is the abstention sentence.

Reward phase (the shape of nanochat's chat_rl, on-policy REINFORCE with a group-mean baseline):
for a prompt, sample a group of answers at temperature > 0, score each with nanochat.rewards,
advantage = reward - group mean, loss = -mean over sampled tokens of advantage * log p(token).
Prompt and retrieved tokens never carry loss.
"""
from __future__ import annotations

import csv
import math
import random
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from nanochat import qa_metrics as M
from nanochat.multihop import group_hops, retrieval_message
from nanochat.raft import MIN_DOC_WORDS, SYSTEM_PROMPT, ChunkStore, answer_target, truncate_words
from nanochat.rewards import compute_reward

# -----------------------------------------------------------------------------
# Conversations with a multi_hop retrieval message


def multihop_conversation(question: str, message: dict, answer: str | None = None, system: str = SYSTEM_PROMPT) -> dict:
    messages = [{"role": "system", "content": system}, message, {"role": "user", "content": question}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return {"messages": messages}


def message_documents(message: dict) -> list[dict]:
    """Documents of a retrieval message in the order the tokenizer numbers them ([1], [2], ...)."""
    if message.get("multi_hop"):
        return [d for hop in message["hops"] for d in hop["documents"]]
    return list(message["documents"])


def _hits_with_gold(hops: list, gold: list[str], store: ChunkStore, answers: list[str], top_k: int):
    """Put every gold document into the hops (gold i goes to hop min(i, last)); return (hops, needed chunk ids)."""
    hops = [(h, q, list(hits)) for h, q, hits in hops] or [(1, None, [])]
    needed = []
    for i, g in enumerate(gold):
        want = answers if i == len(gold) - 1 else None
        present = [c for _, _, hits in hops for c, d, _ in hits
                   if d == g and (want is None or M.contains_answer(store.rows[c]["content"], answers))]
        cid = present[0] if present else store.gold_chunk(g, want)
        if cid is None:
            return None, None
        needed.append(cid)
        if present:
            continue
        hits = hops[min(i, len(hops) - 1)][2]
        drop = next((j for j in range(len(hits) - 1, -1, -1) if hits[j][0] not in needed), None)
        entry = (cid, g, 0.0)
        if drop is None or len(hits) < top_k:
            hits.append(entry)
        else:
            hits[drop] = entry
    return hops, needed


def make_multihop_example(query: dict, hops: list, store: ChunkStore, top_k_per_hop: int, with_gold: bool,
                          rng: random.Random, max_doc_length: int | None):
    """One RAFT-style multi-hop example -> (conversation, cited numbers) or None."""
    answers, gold = query["answers"], list(query.get("doc_ids") or [])
    if not answers or not gold:
        return None
    if with_gold:
        hops, needed = _hits_with_gold(hops, gold, store, answers, top_k_per_hop)
        if hops is None:
            return None
    else:
        hops = [(h, q, [x for x in hits if x[1] not in gold]) for h, q, hits in hops]
        needed = []
    hops = [(h, q or query["question"], hits) for h, q, hits in hops if hits]
    if not hops:
        return None
    for _, _, hits in hops:
        rng.shuffle(hits)  # position carries no signal
    order = [c for _, _, hits in hops for c, _, _ in hits]
    cited = [order.index(c) + 1 for c in needed]
    # answer_target's leading space: the answer tokenizes as it does inside the documents, so the copy head
    # can point at it (without it the first word is a different token sequence from the one shown)
    target = answer_target(answers[0], cited) if with_gold else M.ABSTAIN_ANSWER
    msg = retrieval_message(hops, lambda c, s: store.doc(c, s, max_doc_length))
    return multihop_conversation(query["question"], msg, target), cited


def build_multihop_examples(queries: list[dict], table: pd.DataFrame, chunks, split: str, top_k_per_hop: int = 3,
                            p_gold: float = 0.8, max_doc_length: int | None = 300, seed: int = 0) -> tuple[list, dict]:
    """Multi-hop RAFT conversations for one split of the precomputed table -> (examples, stats)."""
    store = chunks if isinstance(chunks, ChunkStore) else ChunkStore(chunks)
    by_q = group_hops(table[table["split"] == split])
    examples, stats = [], {"n_queries": len(queries), "with_gold": 0, "abstain": 0, "skipped": 0}
    for q in queries:
        rng = random.Random(f"{seed}:{split}:{q['id']}:multihop")
        with_gold = rng.random() < p_gold
        made = make_multihop_example(q, by_q.get(q["id"], []), store, top_k_per_hop, with_gold, rng, max_doc_length)
        if made is None:
            stats["skipped"] += 1
            continue
        stats["with_gold" if with_gold else "abstain"] += 1
        examples.append({"query_id": q["id"], "with_gold": with_gold, "cited": made[1], "conversation": made[0],
                         "answers": q["answers"]})
    return examples, stats


def _shorten(conv: dict, words: int | None, query_words: int | None = None) -> dict:
    """Documents cut to `words` words and, with query_words, hop queries to that many words (hop queries are
    not documents, so the tokenizer never shortens them: long entity-expanded queries must be cut here)."""
    def doc(d):
        return {**d, "content": truncate_words(d["content"], words)} if words else d
    out = []
    for m in conv["messages"]:
        if m["role"] == "retrieval" and m.get("multi_hop"):
            m = {**m, "hops": [{**h, "query": truncate_words(h["query"], query_words) if query_words else h["query"],
                                "documents": [doc(d) for d in h["documents"]]} for h in m["hops"]]}
        elif m["role"] == "retrieval":
            m = {**m, "documents": [doc(d) for d in m["documents"]]}
        out.append(m)
    return {"messages": out}


QUERY_WORD_STEPS = (None, 24, 8)  # hop-query lengths tried, longest first, when a prompt still overflows
WORD_SHRINK = 0.8  # each retry keeps 80% of the document words: short prompts lose little of their documents


def word_budgets(longest: int, max_doc_length: int | None = None):
    """Document word budgets to try, largest first: min(max_doc_length, longest), then 80% steps down to
    MIN_DOC_WORDS (halving would throw away half a document to save a few tokens)."""
    w = min(max_doc_length or longest, longest)
    while True:
        yield w or None
        if not w or w <= MIN_DOC_WORDS:
            return
        w = max(MIN_DOC_WORDS, int(w * WORD_SHRINK))


def _documents(conversation: dict) -> list[dict]:
    """Every retrieved document of a conversation, numbered as rendered ([1] is index 0)."""
    return [d for m in conversation["messages"] if m["role"] == "retrieval" for d in message_documents(m)]


def _longest_doc(conversation: dict) -> int:
    return max((len(d["content"].split()) for d in _documents(conversation)), default=0)


def _supports(conversation: dict, cited: list[int], answers: list[str]) -> bool:
    """Whether a cited document (numbers as rendered) still contains an answer after shortening."""
    docs = _documents(conversation)
    return any(0 < n <= len(docs) and M.contains_answer(docs[n - 1]["content"], answers) for n in cited)


def encode_multihop(tokenizer, conversation: dict, cited: list[int], max_seq_len: int, max_doc_length: int | None,
                    answers: list[str] | None = None):
    """(ids, mask) within max_seq_len keeping every cited document whole, or None (caller counts it).

    Shortens in order: every document's words alike (word_budgets), then hop queries (QUERY_WORD_STEPS);
    never raises on length. With answers (an answered example), an example whose shortened cited documents
    no longer contain the answer is None too: training on it would teach answers the context does not hold."""
    longest = _longest_doc(conversation)
    for qw in QUERY_WORD_STEPS:
        for w in word_budgets(longest, max_doc_length):
            conv = _shorten(conversation, w, qw)
            ids, mask, info = tokenizer.render_conversation(conv, max_tokens=max_seq_len, on_overflow="report")
            cut = set(info["dropped_docs"]) | {int(k) for k in info["shortened_docs"]}
            if not info["cut_tokens"] and not (cut & set(cited)):
                if answers and cited and not _supports(conv, cited, answers):
                    return None
                return ids, mask
            if info["cut_tokens"]:
                break  # documents are not the problem: shorter hop queries next
    return None


def fit_prompt(tokenizer, item: dict, max_tokens: int):
    """Prompt ids for an item's multi-hop conversation within max_tokens -> (ids, message) or None.

    As in training (encode_multihop): every document is shortened alike before any is dropped, then hop
    queries are shortened; only then may the tokenizer drop the last documents. An item whose question alone
    does not fit returns None, to be skipped and counted by the caller. (Letting the tokenizer drop first
    would remove the last hop's document, the one a two-hop answer is in.)"""
    conv = multihop_conversation(item["question"], item["message"])
    longest = _longest_doc(conv)
    for qw in QUERY_WORD_STEPS:
        for w in word_budgets(longest):
            c = _shorten(conv, w, qw)
            ids, info = tokenizer.render_for_completion(c, max_tokens=max_tokens, on_overflow="report")
            if info["cut_tokens"]:
                break
            if not info["dropped_docs"] and not info["shortened_docs"]:
                return ids, c["messages"][1]
    for qw in QUERY_WORD_STEPS:  # last resort: the tokenizer drops documents
        c = _shorten(conv, MIN_DOC_WORDS, qw)
        ids, info = tokenizer.render_for_completion(c, max_tokens=max_tokens, on_overflow="report")
        if not info["cut_tokens"]:
            return ids, c["messages"][1]
    return None


def fit_items(tokenizer, items: list[dict], max_tokens: int) -> tuple[list[dict], int]:
    """Items whose prompt fits max_tokens (hop queries shortened where needed) -> (kept items, number skipped)."""
    kept = []
    for it in items:
        fit = fit_prompt(tokenizer, it, max_tokens)
        if fit is not None:
            kept.append({**it, "message": fit[1]})
    return kept, len(items) - len(kept)


def prompt_items(queries: list[dict], table: pd.DataFrame, chunks, split: str, max_doc_length: int | None = 300,
                 single_table: pd.DataFrame | None = None, top_k_single: int | None = None) -> list[dict]:
    """Held-out / reward-phase items: the multi-hop message as retrieved (no gold insertion) and, with
    top_k_single, single-hop documents for a RAG comparison: the top k of single_table (a max_hops=1
    precompute table; give k = max_hops * top_k_per_hop for an equal budget), else of hop 1."""
    store = chunks if isinstance(chunks, ChunkStore) else ChunkStore(chunks)
    by_q = group_hops(table[table["split"] == split])
    by_single = group_hops(single_table[single_table["split"] == split]) if single_table is not None else by_q
    items = []
    for q in queries:
        hops = by_q.get(q["id"], [])
        msg = retrieval_message(hops, lambda c, s: store.doc(c, s, max_doc_length))
        item = {**q, "message": msg, "hop_doc_ids": [[d for _, d, _ in hits] for _, _, hits in hops]}
        if top_k_single:
            single = by_single.get(q["id"], [])
            first = single[0][2][:top_k_single] if single else []
            item["single_documents"] = [store.doc(c, s, max_doc_length) | {"doc_id": d} for c, d, s in first]
        items.append(item)
    return items


# -----------------------------------------------------------------------------
# Reward phase: sample a group, score, advantages, policy-gradient loss

@torch.no_grad()
def sample_group(engine, prompt: list[int], num_samples: int, max_tokens: int, temperature: float = 1.0,
                 top_k: int | None = 50, seed: int = 0) -> list[list[int]]:
    """num_samples answers to one prompt; each is its generated ids, ending with the stop token if one came."""
    stop = engine.stop_tokens()
    out = [[] for _ in range(num_samples)]
    done = [False] * num_samples
    for column, _ in engine.generate(prompt, num_samples=num_samples, max_tokens=max_tokens,
                                     temperature=temperature, top_k=top_k, seed=seed):
        for i, tok in enumerate(column):
            if not done[i]:
                out[i].append(tok)
                done[i] = tok in stop
    return out


def group_advantages(rewards) -> torch.Tensor:
    """Reward minus the group mean (chat_rl's baseline; no std scaling, so equal rewards give zero)."""
    r = torch.as_tensor(rewards, dtype=torch.float32)
    return r - r.mean()


def policy_gradient_batch(prompt: list[int], samples: list[list[int]], pad_id: int = 0):
    """(inputs (N, T), targets (N, T)) with targets = -1 on prompt positions and padding: only sampled tokens count."""
    seqs = [prompt + s for s in samples]
    T = max(len(s) for s in seqs) - 1
    inputs = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    targets = torch.full((len(seqs), T), -1, dtype=torch.long)
    for i, s in enumerate(seqs):
        x = torch.tensor(s, dtype=torch.long)
        inputs[i, :len(s) - 1] = x[:-1]
        targets[i, len(prompt) - 1:len(s) - 1] = x[len(prompt):]
    return inputs, targets


def policy_gradient_loss(model, inputs: torch.Tensor, targets: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """-(sum over sampled tokens of advantage * log p) / number of sampled tokens."""
    nll = model(inputs, targets, loss_reduction="none").view_as(inputs)  # (N, T); 0 where target == -1
    valid = (targets >= 0).float()
    objective = ((-nll) * valid * advantages.to(nll.dtype).unsqueeze(1)).sum()
    return -objective / valid.sum().clamp(min=1.0)


def score_samples(tokenizer, samples: list[list[int]], item: dict) -> list[dict]:
    """Decode each sample (stop token dropped) and score it with nanochat.rewards."""
    stop = {tokenizer.encode_special("<|assistant_end|>"), tokenizer.get_bos_token_id()}
    docs = message_documents(item["message"])
    out = []
    for s in samples:
        text = tokenizer.decode([t for t in s if t not in stop]).strip()
        out.append({"text": text, **compute_reward(text, item["answers"], docs, item.get("doc_ids"))})
    return out


# -----------------------------------------------------------------------------
# Held-out evaluation: REFRAG (multi-hop) vs RAG (single hop) vs no retrieval

def hop_recall(item: dict, max_hops: int) -> dict:
    """For h = 1..max_hops: share of gold documents found within hops <= h, and whether all were."""
    gold = set(item.get("doc_ids") or [])
    out, found = {}, set()
    for h in range(1, max_hops + 1):
        if h <= len(item["hop_doc_ids"]):
            found |= set(item["hop_doc_ids"][h - 1])
        out[f"recall_hop{h}"] = len(gold & found) / len(gold) if gold else math.nan
        out[f"all_gold_hop{h}"] = float(gold <= found) if gold else math.nan
    return out


def conversation_for(item: dict, condition: str) -> dict:
    if condition == "refrag":
        return multihop_conversation(item["question"], item["message"])
    if condition == "rag":
        return multihop_conversation(item["question"], {"role": "retrieval", "documents": item["single_documents"]})
    return {"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": item["question"]}]}


def evaluate_items(model, tokenizer, items: list[dict], condition: str = "refrag", max_tokens: int = 32,
                   desc: str | None = None) -> list[dict]:
    """Greedy answers under one condition -> per-question rows (em, f1, reward, hops, retrieval recall)."""
    from tqdm.auto import tqdm
    from nanochat.engine import Engine
    engine = Engine(model, tokenizer)
    rows = []
    for it in tqdm(items, desc=desc or condition, mininterval=2.0, disable=len(items) < 20):
        conv = conversation_for(it, condition)
        text, _ = engine.generate_from_conversation(conv, max_tokens=max_tokens, temperature=0.0)
        docs = [] if condition == "no_retrieval" else message_documents(conv["messages"][1])
        rows.append(score_row(it, condition, text, docs))
    return rows


def score_row(item: dict, condition: str, answer: str, docs: list[dict]) -> dict:
    """One evaluation row: an answer given under a condition, scored against the documents it was shown."""
    r = compute_reward(answer, item["answers"], docs, item.get("doc_ids"))
    return {"id": item["id"], "hops": int(item.get("hops", 1)), "condition": condition, "answer": answer.strip(),
            "em": r["em"], "f1": r["f1"], "reward": r["reward"], "citation": r["citation"],
            "retrieval_recall": r["recall"] if docs else math.nan}


def summarize(rows: list[dict], items: list[dict] | None = None, max_hops: int = 3) -> dict:
    """Means of em/f1/reward, EM by hop count, and (with items) per-hop retrieval recall."""
    def mean(v):
        v = [x for x in v if not (isinstance(x, float) and math.isnan(x))]
        return float(np.mean(v)) if v else math.nan
    out = {k: mean([r[k] for r in rows]) for k in ("em", "f1", "reward", "retrieval_recall")}
    out["n"] = len(rows)
    by: dict[int, list] = {}
    for r in rows:
        by.setdefault(r["hops"], []).append(r["em"])
    out["em_by_hops"] = {str(h): mean(v) for h, v in sorted(by.items())}
    if items is not None:
        per = [hop_recall(it, max_hops) for it in items]
        out["hop_recall"] = {k: mean([p[k] for p in per]) for k in per[0]} if per else {}
    return out


def compare_conditions(models: dict, items: list[dict], max_tokens: int = 32, max_hops: int = 3) -> tuple[dict, list]:
    """models: {label: (model, tokenizer, condition)}, e.g. {"refrag": (m1, tok, "refrag"), "rag": (m2, tok, "rag"),
    "no_retrieval": (m2, tok, "no_retrieval")}; all on the same items -> (metrics by label, all rows)."""
    metrics, all_rows = {}, []
    for label, (model, tok, cond) in models.items():
        rows = evaluate_items(model, tok, items, cond, max_tokens, desc=label)
        for r in rows:
            r["label"] = label
        metrics[label] = summarize(rows, items if cond == "refrag" else None, max_hops)
        all_rows += rows
    return metrics, all_rows


# -----------------------------------------------------------------------------
# Reward-phase log and plot

REWARD_FIELDS = ["step", "phase", "loss", "reward", "f1", "em", "recall", "citation", "empty", "unsupported",
                 "long", "abstained", "heldout_em", "heldout_f1", "heldout_reward", "elapsed_s"]


def append_csv(path, row: dict, fields=REWARD_FIELDS) -> None:
    path = Path(path)
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)


def truncate_csv(path, last_step: int) -> None:
    """Keep the rows with step <= last_step (a resumed run rewrites the rest); last_step 0 removes the file."""
    path = Path(path)
    if not path.exists():
        return
    if last_step <= 0:
        path.unlink()
        return
    from nanochat.common import atomic_path
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or REWARD_FIELDS, [r for r in reader if int(float(r["step"])) <= last_step]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)


def plot_reward_curve(csv_path, png_path) -> Path:
    """Mean reward of the sampled answers (reward phase), and held-out EM and reward of greedy answers on the
    same held-out questions, over training steps, one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nanochat.common import atomic_path
    df = pd.read_csv(csv_path)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    rl = df[df["phase"] == "reward"].dropna(subset=["reward"])
    if len(rl):
        ax.plot(rl["step"], rl["reward"].rolling(5, min_periods=1).mean(), label="mean reward (rolling 5)")
    ev = df.dropna(subset=["heldout_em"])
    if len(ev):
        ax.plot(ev["step"], ev["heldout_em"], "o-", label="held-out EM")
    if "heldout_reward" in df:
        hr = df.dropna(subset=["heldout_reward"])
        ax.plot(hr["step"], hr["heldout_reward"], "s--", label="held-out reward (greedy)")
    ax.set_xlabel("step")
    ax.set_ylim(0, 1)
    ax.legend(loc="best")
    ax.set_title("REFRAG: reward and held-out EM")
    fig.tight_layout()
    png_path = Path(png_path)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return png_path
