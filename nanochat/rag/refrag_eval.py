"""Held-out REFRAG evaluation: REFRAG vs RAG vs no retrieval on the same questions.

    python -m scripts.refrag_eval --knowledge_base KB --retrieval multihop.parquet --queries_test F \
        --model_tag REFRAG_TAG [--rag_model_tag RAG_TAG --rag_retrieval single.parquet] --output DIR

Conditions, each on every test question (answers are greedy, documents come from precomputed tables):
    refrag        the REFRAG model over its multi-hop retrieval (the guide's multi_hop message)
    rag           the RAG model over single-hop retrieval, top --rag_top_k documents (default: as many as
                  the REFRAG prompt holds, max_hops x top_k_per_hop, so both see the same number)
    no_retrieval  no retrieval message (what the model knows by itself): the RAG model when one is given,
                  else the REFRAG model

--rag_eval DIR (the RAG run's own scripts.rag_eval output, same questions and document count) supplies the rag
and no_retrieval answers instead of generating them a second time.

Writes DIR/metrics.json (top-level em/f1 are REFRAG's; `conditions` holds each condition's summary; EM by
hop count; per-hop retrieval recall; `em_gain_over_rag` overall and by hop count), DIR/per_question.csv,
DIR/em_by_hops.png and, when the checkpoint has a rewards.csv, DIR/rewards.png (mean reward and held-out EM
over training). metrics.json is written last.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from nanochat.rag.conversation import SYSTEM_PROMPT, message_documents, multihop_conversation
from nanochat.rag.rewards import COMPONENTS, compute_reward

logger = logging.getLogger("nanochat.rag.refrag_eval")


# -----------------------------------------------------------------------------
# Items scored under each condition

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
                   desc: str | None = None, batch_size: int | None = None) -> list[dict]:
    """Greedy answers under one condition -> per-question rows (em, f1, reward, hops, retrieval recall).
    Answers are decoded batch_size side by side (default: the device's), each the one its conversation gets alone."""
    from nanochat.engine import Engine
    engine = Engine(model, tokenizer)
    convs = [conversation_for(it, condition) for it in items]
    answers = engine.generate_batch_conversations(convs, max_tokens=max_tokens, temperature=0.0, batch_size=batch_size,
                                                  progress=(desc or condition) if len(items) >= 20 else False)
    rows = []
    for it, conv, (text, _) in zip(items, convs, answers):
        docs = [] if condition == "no_retrieval" else message_documents(conv["messages"][1])
        rows.append(score_row(it, condition, text, docs))
    return rows

def score_row(item: dict, condition: str, answer: str, docs: list[dict]) -> dict:
    """One evaluation row: an answer given under a condition, scored against the documents it was shown."""
    r = compute_reward(answer, item["answers"], docs, item.get("doc_ids"))
    return {"id": item["id"], "hops": int(item.get("hops", 1)), "condition": condition, "answer": answer.strip(),
            **{k: r[k] for k in COMPONENTS}, "retrieval_recall": r["recall"] if docs else math.nan}

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

def compare_conditions(models: dict, items: list[dict], max_tokens: int = 32, max_hops: int = 3,
                       batch_size: int | None = None) -> tuple[dict, list]:
    """models: {label: (model, tokenizer, condition)}, e.g. {"refrag": (m1, tok, "refrag"), "rag": (m2, tok, "rag"),
    "no_retrieval": (m2, tok, "no_retrieval")}; all on the same items -> (metrics by label, all rows)."""
    metrics, all_rows = {}, []
    for label, (model, tok, cond) in models.items():
        rows = evaluate_items(model, tok, items, cond, max_tokens, desc=label, batch_size=batch_size)
        for r in rows:
            r["label"] = label
        metrics[label] = summarize(rows, items if cond == "refrag" else None, max_hops)
        all_rows += rows
    return metrics, all_rows


# -----------------------------------------------------------------------------
# The CLI

def em_gain(metrics: dict, baseline: str = "rag") -> dict:
    """REFRAG EM minus the baseline's, overall and per hop count."""
    ref, base = metrics["refrag"], metrics[baseline]
    gain = {"all": ref["em"] - base["em"]}
    for h, em in ref["em_by_hops"].items():
        if h in base["em_by_hops"]:
            gain[f"{h}-hop"] = em - base["em_by_hops"][h]
    return {k: round(v, 4) for k, v in gain.items()}


def reused_rag_rows(eval_dir, items: list[dict], top_k: int, model_tag: str | None) -> dict | None:
    """Rows of the rag and no_retrieval conditions from a RAG run's own evaluation (scripts.rag_eval output:
    the same model, greedy, on the same questions), so they are not generated twice. None, with the reason
    logged, unless that evaluation showed top_k documents, used model_tag and answered every item."""
    import pandas as pd
    from nanochat.rag.refrag_eval import score_row
    eval_dir = Path(eval_dir)
    metrics = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
    why = None
    if metrics.get("k") != top_k:
        why = f"it showed {metrics.get('k')} documents, not {top_k}"
    elif model_tag and metrics.get("model_tag") != model_tag:
        why = f"it scored model {metrics.get('model_tag')}, not {model_tag}"
    rows = pd.read_csv(eval_dir / "per_question.csv", dtype=str, keep_default_na=False).set_index("id")
    missing = [it["id"] for it in items if it["id"] not in rows.index]
    if why is None and missing:
        why = f"{len(missing)} questions (e.g. {missing[0]}) are not in it"
    if why is not None:
        logger.warning("not reusing %s: %s; generating the RAG answers", eval_dir, why)
        return None
    out = {"rag": [], "no_retrieval": []}
    for it in items:
        for label, column, docs in (("rag", "answer", it["single_documents"]), ("no_retrieval", "answer_no_retrieval", [])):
            out[label].append({**score_row(it, label, rows.at[it["id"], column], docs), "label": label})
    return out


def _rounded(v):
    if isinstance(v, float):
        return round(v, 4)
    return {k: _rounded(x) for k, x in v.items()} if isinstance(v, dict) else v


def build_parser():
    from nanochat.rag.evaluation import eval_parser
    p = eval_parser("Held-out REFRAG evaluation: REFRAG vs RAG vs no retrieval",
                    "precomputed multi-hop retrieval Parquet (nanochat.retrieval.precompute --max_hops N)", source="refrag",
                    max_tokens=32)
    p.add_argument("--rag_model_tag", default=None, help="RAG checkpoint tag for the rag condition (none: condition left out)")
    p.add_argument("--rag_retrieval", default=None, help="single-hop table for the rag condition (default: hop 1 of --retrieval)")
    p.add_argument("--rag_top_k", type=int, default=None, help="documents shown to the RAG model (default: max_hops x top_k_per_hop)")
    p.add_argument("--rag_eval", default=None, help="the RAG run's scripts.rag_eval output directory: reuse its answers "
                   "(retrieval and no_retrieval) when it showed rag_top_k documents, instead of generating them again")
    p.add_bool("--counterfactual", default=True,
               help="ask the REFRAG model again with the answer fact rewritten in the gold documents it was shown")
    p.add_bool("--adaptive_hops", default=False,
               help="stop hopping when the first hop suffices: show one hop, take the next only when the model "
                    "abstains (for models trained with first-hop examples, nanochat.rag.dataset --p_first_hop)")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    from nanochat.rag import multihop_data as MD
    from nanochat.rag import plots
    from nanochat.checkpoint_manager import checkpoint_dir_of, load_model
    from nanochat.common import atomic_write_json, print0, setup_logging, write_csv
    from nanochat.rag.evaluation import load_evaluated
    from nanochat.retrieval.precompute import load_precomputed
    from nanochat.data.queries import load_queries
    from nanochat.rag.conversation import ChunkStore
    setup_logging()
    device, kb, model, tokenizer, meta = load_evaluated(args)
    train_args = meta.get("args", {})
    max_hops = int(meta.get("max_hops") or train_args.get("max_hops") or 3)
    per_hop = int(meta.get("top_k_per_hop") or train_args.get("top_k_per_hop") or 3)
    max_doc_length = args.max_doc_length or train_args.get("max_doc_length") or 300
    rag_top_k = args.rag_top_k or max_hops * per_hop
    if meta.get("kb_id") and meta["kb_id"] != kb.kb_id:
        logger.warning("REFRAG model was fine-tuned on KB %s but is evaluated on KB %s", meta["kb_id"], kb.kb_id)

    queries = load_queries(args.queries_test)
    queries = queries if args.max_questions < 0 else queries[:args.max_questions]
    table = load_precomputed(args.retrieval)
    single = load_precomputed(args.rag_retrieval) if args.rag_retrieval else None
    items = MD.prompt_items(queries, table, ChunkStore(kb.chunks), args.split, max_doc_length,
                           single_table=single, top_k_single=rag_top_k)
    missing = [it["id"] for it in items if not it["hop_doc_ids"]]
    if missing:
        raise ValueError(f"{len(missing)} of {len(items)} queries (e.g. {missing[0]}) have no rows for split "
                         f"'{args.split}' in {args.retrieval}; precompute multi-hop retrieval for {args.queries_test}")
    budget = model.config.sequence_len - args.max_tokens
    items, too_long = MD.fit_items(tokenizer, items, budget)  # documents shortened to fit, as in training
    if too_long:
        logger.warning("%d questions do not fit %d prompt tokens even without documents: left out", too_long, budget)

    reused = reused_rag_rows(args.rag_eval, items, rag_top_k, args.rag_model_tag) if args.rag_eval else None
    models = {"refrag": (model, tokenizer, "refrag")}
    rag_meta = None
    if args.rag_model_tag and reused is None:
        rag_model, rag_tok, rag_meta = load_model("rag", device, phase="eval", model_tag=args.rag_model_tag,
                                                  base_dir=args.base_dir)
        models["rag"] = (rag_model, rag_tok, "rag")
    if reused is None:  # no documents: the RAG model when there is one (it stops; the REFRAG one rambles to max_tokens)
        models["no_retrieval"] = models["rag"][:2] + ("no_retrieval",) if "rag" in models else (model, tokenizer, "no_retrieval")
    print0(f"refrag_eval: {len(items)} questions; refrag {meta.get('model_tag')} ({max_hops} hops x {per_hop}); "
           f"rag {args.rag_model_tag or '-'} (top {rag_top_k}{', answers from ' + str(args.rag_eval) if reused else ''}); "
           f"max_tokens {args.max_tokens}")
    adaptive = {}
    if args.adaptive_hops:  # the REFRAG condition hops only while the model abstains
        refrag_rows = evaluate_adaptive(model, tokenizer, items, args.max_tokens)
        adaptive = {"refrag": (summarize(refrag_rows, items, max_hops), refrag_rows)}
        models.pop("refrag")
    by_label, rows = compare_conditions(models, items, args.max_tokens, max_hops, args.batch_size)
    for label, (summary, label_rows) in adaptive.items():
        summary["hops_used"] = float(np.mean([r["hops_used"] for r in label_rows]))
        by_label = {label: summary, **by_label}
        rows = label_rows + rows
    for label, label_rows in (reused or {}).items():  # the RAG run's own answers: RAG model, with and without documents
        by_label[label] = summarize(label_rows, None, max_hops)
        rows += label_rows

    add_trust_columns(rows, items)
    if args.counterfactual:
        from nanochat.rag.counterfactual import answer_pool
        counterfactual_refrag(model, tokenizer, items, rows, answer_pool(load_queries(args.queries_test)),
                              args.max_tokens, args.seed)
    trust = trust_by_condition(rows)
    for label, block in trust.items():
        by_label[label].update({k: v for k, v in block.items() if k not in ("n", "em")})
    ref = by_label["refrag"]
    metrics = {"n": ref["n"], "em": ref["em"], "f1": ref["f1"], "reward": ref["reward"],
               "em_rag": by_label.get("rag", {}).get("em", math.nan), "em_no_retrieval": by_label["no_retrieval"]["em"],
               "hop_recall": ref.get("hop_recall", {}), "conditions": by_label,
               "em_by_hops": {h: {label: s["em_by_hops"].get(h, math.nan) for label, s in by_label.items()}
                              for h in ref["em_by_hops"]},
               "max_hops": max_hops, "top_k_per_hop": per_hop, "rag_top_k": rag_top_k, "too_long": too_long,
               "adaptive_hops": bool(args.adaptive_hops), "hops_used": ref.get("hops_used"),
               **{k: v for k, v in trust.get("refrag", {}).items() if k not in ("n", "em")},
               "kb_id": kb.kb_id, "model_source": args.source, "model_tag": meta.get("model_tag"),
               "model_step": meta.get("step"), "rag_model_tag": args.rag_model_tag,
               "rag_model_step": rag_meta.get("step") if rag_meta else None,
               "rag_answers_from": str(args.rag_eval) if reused else None, "retrieval": str(args.retrieval),
               "rag_retrieval": str(args.rag_retrieval) if args.rag_retrieval else None, "queries": str(args.queries_test)}
    if "rag" in by_label:
        metrics["em_gain_over_rag"] = em_gain(by_label, "rag")
    metrics["em_gain_over_no_retrieval"] = em_gain(by_label, "no_retrieval")

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "per_question.csv", rows)
    plots.em_by_hops(metrics, out / "em_by_hops.png", title="EM by hop count: REFRAG vs RAG vs no retrieval")
    plots.trust_plots(metrics, out, label="REFRAG")
    ckpt_dir = checkpoint_dir_of(args.source, str(meta.get("model_tag")), args.base_dir)
    if (ckpt_dir / "rewards.csv").is_file():  # written by scripts.refrag_finetune beside its checkpoints
        plots.plot_reward_curve(ckpt_dir / "rewards.csv", out / "rewards.png")
    atomic_write_json(out / "metrics.json", metrics)  # last: the workflow's declared output
    print0(json.dumps(_rounded({k: metrics.get(k) for k in ("n", "em", "em_rag", "em_no_retrieval", "em_by_hops",
                                                             "hop_recall", "em_gain_over_rag", "faithfulness_counterfactual",
                                                             "memory_answer_rate", "citation_precision", "citation_recall",
                                                             "abstention_correct_when_gold_absent")})))
    return metrics


# -----------------------------------------------------------------------------
# Trust: abstention and citation figures, counterfactual documents, failure classes (nanochat.rag.trust_eval)

def _doc_id(doc: dict) -> str:
    return str(doc.get("doc_id") or str(doc.get("id", "")).split("#", 1)[0])


def shown_documents(item: dict, condition: str) -> list[dict]:
    """The documents a condition showed for an item, numbered as in its prompt ([1] first)."""
    if condition == "no_retrieval":
        return []
    return message_documents(conversation_for(item, condition)["messages"][1])


def add_trust_columns(rows: list[dict], items: list[dict]) -> None:
    """gold_present, citation precision/recall (as scripts.rag_eval scores them) and em_no_retrieval (from the
    no_retrieval rows of the same question) on every row: what failure attribution needs."""
    from nanochat.rag import metrics as M
    by_id = {it["id"]: it for it in items}
    no_ret = {r["id"]: r["em"] for r in rows if r["condition"] == "no_retrieval"}
    for r in rows:
        it = by_id[r["id"]]
        docs = shown_documents(it, r["condition"])
        gold = set(it.get("doc_ids") or [])
        r["gold_present"] = float(bool(gold) and gold <= {_doc_id(d) for d in docs}) if gold else math.nan
        cp = M.citation_precision(r["answer"], docs, it["answers"], it.get("doc_ids")) if docs else None
        cr = None if r["abstained"] or not docs else M.citation_recall(r["answer"], docs, it.get("doc_ids") or [])
        r["citation_precision"] = math.nan if cp is None else cp
        r["citation_recall"] = math.nan if cr is None else cr
        if r["id"] in no_ret:
            r["em_no_retrieval"] = no_ret[r["id"]]


def with_documents(message: dict, documents: list[dict]) -> dict:
    """A retrieval message whose documents (in message order) are replaced, hop structure kept."""
    if not message.get("multi_hop"):
        return {**message, "documents": list(documents)}
    hops, i = [], 0
    for hop in message["hops"]:
        n = len(hop["documents"])
        hops.append({**hop, "documents": list(documents[i:i + n])})
        i += n
    return {**message, "hops": hops}


def generate_texts(model, tokenizer, conversations: list[dict], max_tokens: int, desc: str) -> list[str]:
    """Greedy answers to prepared conversations (the counterfactual condition's prompts)."""
    from tqdm.auto import tqdm
    from nanochat.engine import Engine
    engine = Engine(model, tokenizer)
    return [engine.generate_from_conversation(c, max_tokens=max_tokens, temperature=0.0)[0].strip()
            for c in tqdm(conversations, desc=desc, mininterval=2.0, disable=len(conversations) < 20)]


def counterfactual_refrag(model, tokenizer, items: list[dict], rows: list[dict], pool: dict, max_tokens: int,
                          seed: int = 0) -> int:
    """The counterfactual condition for the REFRAG model: questions whose gold documents are all in the multi-hop
    message, asked again with the answer fact rewritten in them; cf_* columns on the refrag rows."""
    from nanochat.rag import trust_eval
    by_id = {it["id"]: it for it in items}
    cases = [(by_id[r["id"]], shown_documents(by_id[r["id"]], "refrag"), r) for r in rows
             if r["condition"] == "refrag" and r.get("gold_present") == 1.0]
    build = lambda it, docs: multihop_conversation(it["question"], with_documents(it["message"], docs))  # noqa: E731
    return trust_eval.counterfactual_condition(
        lambda convs: generate_texts(model, tokenizer, convs, max_tokens, "counterfactual"), cases, build, pool, seed)


def trust_by_condition(rows: list[dict]) -> dict:
    """trust_eval.trust_metrics for each condition that showed documents -> {condition: block}."""
    from nanochat.rag import trust_eval
    out = {}
    for cond in dict.fromkeys(r["condition"] for r in rows):
        if cond != "no_retrieval":
            out[cond] = trust_eval.trust_metrics([r for r in rows if r["condition"] == cond])
    return out


# -----------------------------------------------------------------------------
# Adaptive hopping: stop when the first hop suffices

def first_hops(message: dict, n: int) -> dict:
    """The multi-hop message cut to its first n hops."""
    return {**message, "hops": message["hops"][:n]} if message.get("multi_hop") else message


def evaluate_adaptive(model, tokenizer, items: list[dict], max_tokens: int = 32,
                      desc: str = "refrag (adaptive)") -> list[dict]:
    """The REFRAG condition with adaptive hopping: ask after the first hop, and take the next hop only when the
    model abstains (it learned to abstain when the documents so far lack the answer: p_first_hop in training).
    One-hop questions are then answered from one hop's documents, not crowded by a second hop's; a two-hop
    question costs one more generation. Sets item["message"] to the message finally shown and row["hops_used"]."""
    from nanochat.rag import metrics as M
    pending = list(range(len(items)))
    answers: dict[int, str] = {}
    used: dict[int, int] = {}
    n_max = max((len(it["message"].get("hops", [])) for it in items), default=1)
    full = {i: it["message"] for i, it in enumerate(items)}
    for n in range(1, n_max + 1):
        convs = []
        for i in pending:
            msg = first_hops(full[i], n)  # the full message already fits (fit_items): its first hops do too
            items[i]["message"] = msg
            convs.append(multihop_conversation(items[i]["question"], msg))
        texts = generate_texts(model, tokenizer, convs, max_tokens, f"{desc}: hop {n}")
        still = []
        for i, text in zip(pending, texts):
            answers[i], used[i] = text, min(n, len(full[i].get("hops", [1])) or 1)
            if M.is_abstention(text) and n < len(full[i].get("hops", [])):
                still.append(i)
        pending = still
        if not pending:
            break
    rows = []
    for i, it in enumerate(items):
        row = score_row(it, "refrag", answers[i], message_documents(it["message"]))
        rows.append({**row, "hops_used": used[i], "label": "refrag"})
    return rows
