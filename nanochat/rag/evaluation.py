"""Held-out RAG evaluation: generate answers with the Engine and score them.

The documents come from the PRECOMPUTED retrieval table (nanochat.retrieval.precompute), never from a
retriever in the loop, so an evaluation is reproducible and costs generation time only. The same
model is scored three ways on the same questions:

    retrieval      top-k documents from the table (what a deployed model sees)
    no_retrieval   no retrieval message (what the model knows by itself)
    oracle         the gold documents, padded with retrieved distractors to k (a ceiling)
    counterfactual questions whose gold documents were retrieved, asked again with the answer fact rewritten
                   in those documents (nanochat.rag.counterfactual): does the answer follow the documents?

Every question also gets a failure class (nanochat.rag.failures) in per_question.csv, summarised in metrics.json
with the faithfulness and abstention figures per hop count (nanochat.rag.trust_eval), and recall@k for k up to
the table's depth. An optional abstention threshold on the answer's mean token probability (--abstain_threshold,
a number, a calibration file or `auto`: calibrated on --queries_val) turns unsure answers into abstentions.

    python -m scripts.rag_eval --knowledge_base KB --retrieval retrieval.parquet --queries_test F \
        --source rag --model_tag TAG --output DIR
"""
from __future__ import annotations

import json
import logging
import math
import time
import zlib
from pathlib import Path

import numpy as np

from nanochat.rag import metrics as M
from nanochat.rag import trust_eval
from nanochat.rag.conversation import build_conversation, truncate_words
from nanochat.rag.counterfactual import answer_pool

logger = logging.getLogger("nanochat.rag.evaluation")
CONDITIONS = ("retrieval", "no_retrieval", "oracle", "counterfactual")


# -----------------------------------------------------------------------------
# Items: a query with its retrieved and gold documents

def chunk_lookup(kb) -> dict:
    """chunk id -> document dict as the retrieval message wants it (title, content, id, doc_id)."""
    c = kb.chunks
    return {cid: {"id": cid, "doc_id": did, "title": t or "", "content": txt or ""}
            for cid, did, t, txt in zip(c["id"], c["doc_id"], c["title"], c["content"])}


def load_items(queries, table, kb, top_k: int, split: str | None = None, max_questions: int = -1) -> list[dict]:
    """Join queries with their top-k rows of the precomputed table (hop 1) and their gold chunks."""
    if split is not None and "split" in table.columns and split in set(table["split"]):
        table = table[table["split"] == split]
    table = table[table["hop"] == table["hop"].min()] if "hop" in table.columns else table
    chunks = chunk_lookup(kb)
    by_doc: dict[str, list[str]] = {}
    for cid, d in chunks.items():
        by_doc.setdefault(d["doc_id"], []).append(cid)
    hits = {qid: g.sort_values("rank")["chunk_id"].tolist() for qid, g in table.groupby("query_id")}
    items, missing = [], 0
    for q in queries if max_questions < 0 else queries[:max_questions]:
        if q["id"] not in hits:
            missing += 1
            continue
        ranked = [chunks[c] for c in hits[q["id"]] if c in chunks]
        gold = [chunks[c] for d in q.get("doc_ids", []) for c in by_doc.get(d, [])]
        items.append({**q, "ranked": ranked, "retrieved": ranked[:top_k], "gold_docs": gold})
    if missing:
        raise ValueError(f"{missing} of {len(queries)} queries have no rows in the retrieval table; "
                         "precompute retrieval for this query file (python -m nanochat.retrieval.precompute)")
    return items


def oracle_documents(item: dict, top_k: int, seed: int = 0) -> list[dict]:
    """Gold documents plus the best retrieved non-gold ones up to k, in a seeded order (gold not always first)."""
    gold_ids = {d["id"] for d in item["gold_docs"]}
    fill = [d for d in item["ranked"] if d["id"] not in gold_ids][: max(0, top_k - len(gold_ids))]
    docs = item["gold_docs"][:top_k] + fill
    order = np.random.default_rng([seed, zlib.crc32(str(item["id"]).encode())]).permutation(len(docs))
    return [docs[i] for i in order]


def truncate_docs(docs: list[dict], max_doc_length: int | None) -> list[dict]:
    """Cut each document to max_doc_length whitespace words, as nanochat.rag.raft did for training (-1/None = all)."""
    if max_doc_length is None or max_doc_length < 0:
        return docs
    return [{**d, "content": truncate_words(d["content"], max_doc_length)} for d in docs]


# -----------------------------------------------------------------------------
# Scoring

def retrieval_scores(ranked_doc_ids: list[str], gold: list[str], k: int) -> tuple[float, float]:
    """(recall@k, nDCG@10) at document level: ranked chunk doc_ids deduplicated in order, binary relevance."""
    from nanochat.retrieval.evaluate import ranking_metric
    if not gold:
        return math.nan, math.nan
    docs = list(dict.fromkeys(ranked_doc_ids))
    rels = {g: 1 for g in gold}
    return ranking_metric(f"recall@{k}", rels, docs), ranking_metric("ndcg@10", rels, docs)


def score_answer(answer: str, item: dict, documents: list[dict] | None) -> dict:
    """Per-answer metrics for one condition (citation/unsupported only when documents were shown)."""
    gold_ids = item.get("doc_ids", [])
    row = {"em": M.exact_match(answer, item["answers"]) if item["answers"] else math.nan,
           "f1": M.f1_score(answer, item["answers"]) if item["answers"] else math.nan,
           "abstained": float(M.is_abstention(answer))}
    if documents is not None:
        cp = M.citation_precision(answer, documents, item["answers"], gold_ids)
        # an abstention claims nothing, so it has nothing to cite (abstaining is scored by the abstention metrics)
        cr = None if row["abstained"] else M.citation_recall(answer, documents, gold_ids)
        row.update(citation_precision=math.nan if cp is None else cp, citation_recall=math.nan if cr is None else cr,
                   unsupported=float(M.is_unsupported(answer, documents)),
                   gold_present=float(bool(set(gold_ids)) and set(gold_ids) <= {d["doc_id"] for d in documents}))
    return row


def _mean(values) -> float:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else math.nan


def aggregate(rows: list[dict], k: int) -> dict:
    """Corpus-level metrics from per-question rows (keys as in metrics.json)."""
    r = lambda key: [row.get(key, math.nan) for row in rows]  # noqa: E731
    absent = [row for row in rows if row.get("gold_present") == 0.0]
    present = [row for row in rows if row.get("gold_present") == 1.0]
    out = {
        "n": len(rows),
        "em": _mean(r("em")), "f1": _mean(r("f1")),
        "em_no_retrieval": _mean(r("em_no_retrieval")), "f1_no_retrieval": _mean(r("f1_no_retrieval")),
        "em_oracle": _mean(r("em_oracle")), "f1_oracle": _mean(r("f1_oracle")),
        "citation_precision": _mean(r("citation_precision")), "citation_recall": _mean(r("citation_recall")),
        "unsupported_rate": _mean(r("unsupported")),
        "abstention_rate": _mean(r("abstained")),
        # abstaining is the right answer exactly when the gold document was not retrieved
        "abstention_correct_when_gold_absent": _mean([row["abstained"] for row in absent]),
        "false_abstention_when_gold_present": _mean([row["abstained"] for row in present]),
        "n_gold_absent": len(absent),
        f"retrieval_recall@{k}": _mean(r("recall_at_k")),
        "retrieval_ndcg@10": _mean(r("ndcg_at_10")),
        "k": k,
    }
    by_hops: dict[int, list] = {}
    for row in rows:
        by_hops.setdefault(int(row.get("hops", 1)), []).append(row)
    out["em_by_hops"] = {str(h): {c: _mean([x.get(key) for x in rs]) for c, key in
                                  (("retrieval", "em"), ("no_retrieval", "em_no_retrieval"), ("oracle", "em_oracle"))}
                         for h, rs in sorted(by_hops.items())}
    return out


# -----------------------------------------------------------------------------
# Generation and the whole evaluation

def generate_answers(engine, conversations: list[dict], max_tokens: int = 48, desc: str = "generate",
                     batch_size: int | None = None) -> list[str]:
    """Greedy answers, decoded batch_size rows side by side (default: the device's, nanochat.engine); each is the
    answer generate_from_conversation gives for its conversation alone (tqdm progress)."""
    return [text.strip() for text, _ in engine.generate_batch_conversations(
        conversations, max_tokens=max_tokens, temperature=0.0, batch_size=batch_size, progress=desc)]


def evaluate(model, tokenizer, items: list[dict], top_k: int, max_tokens: int = 48, max_doc_length: int = 300,
             conditions=CONDITIONS, seed: int = 0, batch_size: int | None = None, pool: dict | None = None,
             threshold: float | None = None) -> tuple[dict, list[dict]]:
    """Score the model on items under each condition -> (metrics, per-question rows).

    pool: substitutes for the counterfactual condition (nanochat.rag.counterfactual.answer_pool; default: the
    items' own answers). threshold: abstain on retrieval answers whose mean token probability is below it."""
    from nanochat.engine import Engine
    engine = Engine(model, tokenizer)
    docs_for = {"retrieval": lambda it: it["retrieved"], "no_retrieval": lambda it: None,
                "oracle": lambda it: oracle_documents(it, top_k, seed)}
    rows = [{"id": it["id"], "question": it["question"], "answers": " | ".join(it["answers"]), "hops": it.get("hops", 1),
             "doc_ids": " ".join(it.get("doc_ids", []))} for it in items]
    for it, row in zip(items, rows):
        row["recall_at_k"], row["ndcg_at_10"] = retrieval_scores([d["doc_id"] for d in it["ranked"]],
                                                                 it.get("doc_ids", []), top_k)
    timings = {}
    for cond in [c for c in conditions if c in docs_for]:
        t0 = time.time()
        docs = [docs_for[cond](it) for it in items]
        docs = [None if d is None else truncate_docs(d, max_doc_length) for d in docs]
        convs = [build_conversation(it["question"], d) for it, d in zip(items, docs)]
        answers = generate_answers(engine, convs, max_tokens, desc=cond, batch_size=batch_size)
        if cond == "retrieval" and threshold is not None:
            for row, ans in zip(rows, answers):
                row["answer"] = ans
            answers = trust_eval.apply_threshold(model, tokenizer, convs, rows, threshold, max_tokens)
        suffix = "" if cond == "retrieval" else f"_{cond}"
        for it, row, ans, d in zip(items, rows, answers, docs):
            s = score_answer(ans, it, d)
            row[f"answer{suffix}"] = ans
            if cond == "retrieval":
                row.update(s)
                row["retrieved_doc_ids"] = " ".join(x["doc_id"] for x in d)
            else:
                row[f"em{suffix}"], row[f"f1{suffix}"] = s["em"], s["f1"]
        timings[cond] = round(time.time() - t0, 1)
    if "counterfactual" in conditions and "retrieval" in conditions:
        t0 = time.time()
        cases = [(it, truncate_docs(it["retrieved"], max_doc_length), row) for it, row in zip(items, rows)
                 if row.get("gold_present") == 1.0]
        trust_eval.counterfactual_condition(lambda convs: generate_answers(engine, convs, max_tokens, "counterfactual"),
                                            cases, lambda it, d: build_conversation(it["question"], d),
                                            pool if pool is not None else answer_pool(items), seed)
        timings["counterfactual"] = round(time.time() - t0, 1)
    metrics = aggregate(rows, top_k)
    if "retrieval" in conditions:
        metrics.update(trust_eval.trust_metrics(rows))
        metrics["retrieval_recall_curve"] = trust_eval.recall_curve(
            [[d["doc_id"] for d in it["ranked"]] for it in items], [it.get("doc_ids") or [] for it in items],
            max((len({d["doc_id"] for d in it["ranked"]}) for it in items), default=top_k))
    metrics["abstain_threshold"] = threshold
    metrics["generation_seconds"] = timings
    return metrics, rows


def eval_parser(description: str, retrieval_help: str, source: str, max_tokens: int):
    """The flags every held-out evaluation CLI shares (scripts.rag_eval, scripts.refrag_eval); callers add theirs."""
    from nanochat.cli import ArgumentParser, output_dir
    p = ArgumentParser(description=description)
    p.add_argument("--knowledge_base", required=True, help="KB directory the retrieval table was built on")
    p.add_argument("--retrieval", required=True, help=retrieval_help)
    p.add_argument("--queries_test", required=True, help="held-out queries JSONL")
    p.add_argument("--split", default="test", help="split name of these queries in the retrieval table")
    p.add_argument("--source", default=source, help="checkpoint family (base | mid | sft | rag | refrag) or a checkpoint directory")
    p.add_argument("--model_tag", default=None, help="checkpoint tag (default: largest model)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: last)")
    p.add_argument("--base_dir", default=None, help="checkpoints root (default $NANOCHAT_BASE_DIR)")
    p.add_argument("--max_doc_length", type=int, default=None, help="words per document (default: the fine-tune's)")
    p.add_argument("--max_tokens", type=int, default=max_tokens, help="answer length cap in tokens")
    p.add_argument("--max_questions", type=int, default=-1, help="evaluate the first N questions (-1 = all)")
    p.add_argument("--batch_size", type=int, default=None,
                   help="answers decoded side by side (default: per device, nanochat.engine.DEFAULT_BATCH_SIZE)")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto")
    p.add_argument("--num_threads", type=int, default=-1, help="CPU threads (-1 = auto: 1 when the machine is oversubscribed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the oracle document order and the counterfactual substitutes")
    p.add_argument("--output", type=output_dir, required=True, help="output directory for metrics.json, per_question.csv, *.png")
    return p


def load_evaluated(args):
    """From eval_parser's flags: (device, knowledge base, model, tokenizer, checkpoint meta), threads set."""
    from nanochat.checkpoint_manager import load_model
    from nanochat.common import resolve_device
    from nanochat.retrieval.kb import KnowledgeBase
    from nanochat.train.loop import set_threads
    device = resolve_device(args.device)
    set_threads(args.num_threads, device)
    kb = KnowledgeBase.load(args.knowledge_base)
    model, tokenizer, meta = load_model(args.source, device, phase="eval", model_tag=args.model_tag, step=args.step,
                                        base_dir=args.base_dir)
    return device, kb, model, tokenizer, meta


def main(argv=None):
    from nanochat.common import atomic_write_json, print0, setup_logging, write_csv
    setup_logging()
    p = eval_parser("Held-out RAG evaluation over precomputed retrieval",
                    "precomputed retrieval Parquet (nanochat.retrieval.precompute)", source="rag", max_tokens=48)
    p.add_argument("--top_k", type=int, default=None, help="documents shown (default: the fine-tune's top_k, else 5)")
    p.add_argument("--conditions", default=",".join(CONDITIONS), help=f"comma list of {','.join(CONDITIONS)} (counterfactual needs retrieval)")
    p.add_argument("--training_csv", default=None, help="fine-tune metrics.csv for the curves plot (default: beside the checkpoint)")
    add_threshold_flags(p)
    args = p.parse_args(argv)

    from nanochat.checkpoint_manager import checkpoint_dir_of
    from nanochat.retrieval.precompute import load_precomputed
    from nanochat.data.queries import load_queries
    from nanochat.rag import plots
    device, kb, model, tokenizer, meta = load_evaluated(args)
    train_args = meta.get("args", {})
    top_k = args.top_k or train_args.get("top_k") or 5
    max_doc_length = args.max_doc_length or train_args.get("max_doc_length") or 300
    if meta.get("kb_id") and meta["kb_id"] != kb.kb_id:
        logger.warning("model was fine-tuned on KB %s but evaluated on KB %s", meta["kb_id"], kb.kb_id)
    table, test_queries = load_precomputed(args.retrieval), load_queries(args.queries_test)
    items = load_items(test_queries, table, kb, top_k, args.split, args.max_questions)
    print0(f"rag_eval: {len(items)} questions, top_k {top_k}, model {args.source}/{meta.get('model_tag', args.model_tag)} "
           f"step {meta.get('step')}")
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown:
        raise SystemExit(f"--conditions: unknown {', '.join(unknown)} (known: {', '.join(CONDITIONS)})")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    threshold = resolve_abstain_threshold(args, model, tokenizer, kb, table, top_k, max_doc_length, out)
    metrics, rows = evaluate(model, tokenizer, items, top_k, args.max_tokens, max_doc_length, conditions,
                             seed=args.seed, batch_size=args.batch_size, pool=answer_pool(test_queries),
                             threshold=threshold)
    metrics.update(kb_id=kb.kb_id, model_source=args.source, model_tag=meta.get("model_tag", args.model_tag),
                   model_step=meta.get("step"), retrieval=str(args.retrieval), queries=str(args.queries_test))
    write_csv(out / "per_question.csv", rows)
    plots.metric_bars(metrics, out / "metrics_by_condition.png")
    plots.em_by_hops(metrics, out / "em_by_hops.png")
    plots.trust_plots(metrics, out)
    ckpt_csv = Path(args.training_csv) if args.training_csv else None
    if ckpt_csv is None and meta.get("model_tag"):
        ckpt_csv = checkpoint_dir_of(args.source, meta["model_tag"], args.base_dir) / "metrics.csv"
    if ckpt_csv is not None and ckpt_csv.is_file():
        plots.training_curves(ckpt_csv, out / "training_curves.png")
    atomic_write_json(out / "metrics.json", metrics)  # last: the workflow's declared output
    print0(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()
                       if k in ("n", "em", "f1", "em_no_retrieval", "em_oracle", "citation_precision",
                                "citation_recall", "unsupported_rate", f"retrieval_recall@{top_k}",
                                "abstention_correct_when_gold_absent", "false_abstention_when_gold_present",
                                "faithfulness_counterfactual", "memory_answer_rate")}))
    return metrics


def add_threshold_flags(p) -> None:
    """The optional abstention threshold's flags (scripts.rag_eval; scripts.rag_chat takes --abstain_threshold)."""
    p.add_argument("--abstain_threshold", default=None,
                   help="abstain when the answer's mean token probability is below this: a number, a calibration "
                        "JSON (calibration.json of an earlier evaluation), or auto (calibrate on --queries_val)")
    p.add_argument("--queries_val", default=None, help="validation queries for --abstain_threshold auto")
    p.add_argument("--calibration_questions", type=int, default=200, help="validation questions used to calibrate")
    p.add_argument("--max_false_abstention", type=float, default=0.05,
                   help="calibration: largest share of correct validation answers the threshold may abstain on")


def resolve_abstain_threshold(args, model, tokenizer, kb, table, top_k: int, max_doc_length, out: Path):
    """--abstain_threshold as a number (None when off); `auto` calibrates on validation questions over the same
    retrieval table and writes out/calibration.json (chat and serving read it back with the same flag)."""
    from nanochat.common import atomic_write_json
    from nanochat.data.queries import load_queries
    from nanochat.engine import Engine
    from nanochat.rag.confidence import resolve_threshold
    if str(args.abstain_threshold).lower() != "auto":
        return resolve_threshold(args.abstain_threshold)
    if not args.queries_val:
        raise SystemExit("--abstain_threshold auto needs --queries_val (validation questions to calibrate on)")
    val = load_items(load_queries(args.queries_val), table, kb, top_k, "val", args.calibration_questions)
    convs = [build_conversation(it["question"], truncate_docs(it["retrieved"], max_doc_length)) for it in val]
    answers = generate_answers(Engine(model, tokenizer), convs, args.max_tokens, desc="calibrate")
    correct = [bool(M.exact_match(a, it["answers"])) for a, it in zip(answers, val)]
    cal = trust_eval.calibrate(model, tokenizer, convs, answers, correct, args.max_tokens, args.max_false_abstention)
    atomic_write_json(out / "calibration.json", {**cal, "queries": str(args.queries_val)})
    return cal["threshold"]


if __name__ == "__main__":
    main()
