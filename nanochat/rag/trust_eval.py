"""What a user needs to trust an evaluated model, shared by scripts.rag_eval and scripts.refrag_eval:

    counterfactual_condition   the answer fact rewritten in the shown gold documents (nanochat.rag.counterfactual),
                               answers generated again: does the answer follow the documents or memory?
    recall_curve               retrieval recall@k for k = 1..k_max (document level), for the report's curves
    calibrate / threshold      the optional abstention threshold on the answer's mean token probability
                               (nanochat.rag.confidence), calibrated on validation questions
    trust_metrics              the metrics.json block: faithfulness, memory answers, failure classes (nanochat.rag.failures),
                               abstention and citation figures, all per hop count too

Generation goes through a `generate(conversations) -> [answer]` callable, so that each evaluation keeps its own
generation loop (batched or not) and this module never runs a model itself, except for confidences.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from nanochat.rag import failures
from nanochat.rag import metrics as M
from nanochat.rag.counterfactual import counterfactual_documents


def _mean(values) -> float:
    vals = [float(v) for v in values if v is not None and v != "" and not math.isnan(float(v))]
    return float(np.mean(vals)) if vals else math.nan


def recall_curve(ranked_doc_ids: list[list[str]], gold: list[list[str]], k_max: int) -> dict[str, float]:
    """{"1": recall@1, ..., "k_max": recall@k_max}: share of each question's gold documents among its first k
    distinct retrieved documents, averaged over questions with gold ids."""
    per_k = {k: [] for k in range(1, k_max + 1)}
    for ranked, g in zip(ranked_doc_ids, gold):
        if not g:
            continue
        docs = list(dict.fromkeys(ranked))
        for k in per_k:
            per_k[k].append(len(set(g) & set(docs[:k])) / len(set(g)))
    return {str(k): _mean(v) for k, v in per_k.items()}


def counterfactual_condition(generate: Callable[[list], list[str]], cases: list[tuple[dict, list, dict]],
                             build: Callable[[dict, list[dict]], dict], pool: dict, seed: int = 0) -> int:
    """Rewrite, regenerate and score. cases: (item, shown documents, row) of questions whose gold documents were
    shown; build(item, documents) makes the conversation. Adds to every case's row: cf_substitute, answer_cf,
    cf_follow (the answer is the substitute) and cf_memory (the answer is still the original), NaN where the
    fact could not be rewritten. Returns the number rewritten."""
    todo = []
    for item, documents, row in cases:
        made = counterfactual_documents(item["question"], item["answers"], documents, item.get("doc_ids") or [],
                                        pool, seed, key=str(item["id"]))
        row.update(cf_substitute="", answer_cf="", cf_follow=math.nan, cf_memory=math.nan)
        if made is not None:
            todo.append((item, row, build(item, made[0]), made[1]))
    answers = generate([conv for _, _, conv, _ in todo]) if todo else []
    for (item, row, _, sub), ans in zip(todo, answers):
        row.update(cf_substitute=sub, answer_cf=ans, cf_follow=M.exact_match(ans, [sub]),
                   cf_memory=M.exact_match(ans, item["answers"]))
    return len(todo)


def trust_metrics(rows: list[dict], by: str = "hops") -> dict:
    """The trust block of metrics.json from scored rows (em, abstained, gold_present, citation_*, cf_*, and
    em_no_retrieval when measured); sets row["failure_class"]. Keys:
    faithfulness_counterfactual, memory_answer_rate, n_counterfactual, abstention_correct_when_gold_absent,
    false_abstention_when_gold_present, failure_classes {all, counts, by_hops}, by_hops {h: {...}}."""
    classes = failures.attribute(rows, by)

    def block(rs: list[dict]) -> dict:
        absent = [r for r in rs if r.get("gold_present") == 0.0]
        present = [r for r in rs if r.get("gold_present") == 1.0]
        cf = [r for r in rs if not math.isnan(float(r.get("cf_follow", math.nan)))]
        return {"n": len(rs), "em": _mean(r.get("em") for r in rs),
                "faithfulness_counterfactual": _mean(r["cf_follow"] for r in cf),
                "memory_answer_rate": _mean(r["cf_memory"] for r in cf), "n_counterfactual": len(cf),
                "abstention_correct_when_gold_absent": _mean(r["abstained"] for r in absent),
                "false_abstention_when_gold_present": _mean(r["abstained"] for r in present),
                "n_gold_absent": len(absent),
                "citation_precision": _mean(r.get("citation_precision") for r in rs),
                "citation_recall": _mean(r.get("citation_recall") for r in rs)}
    out = block(rows)
    groups: dict[str, list] = {}
    for r in rows:
        groups.setdefault(str(int(float(r.get(by, 1) or 1))), []).append(r)
    out["by_hops"] = {h: block(rs) for h, rs in sorted(groups.items(), key=lambda kv: int(kv[0]))}
    out["failure_classes"] = classes
    return out


def calibrate(model, tokenizer, conversations: list[dict], answers: list[str], correct: list[bool],
              max_tokens: int, max_false_abstention: float = 0.05) -> dict:
    """The abstention threshold from validation answers (see nanochat.rag.confidence.calibrate_threshold)."""
    from nanochat.rag.confidence import answer_confidence, calibrate_threshold
    conf = [answer_confidence(model, tokenizer, c, a, max_tokens) for c, a in zip(conversations, answers)]
    keep = [i for i, a in enumerate(answers) if not M.is_abstention(a)]
    cal = calibrate_threshold([conf[i] for i in keep], [correct[i] for i in keep], max_false_abstention)
    return {**cal, "n_questions": len(answers), "confidence": "mean token probability of the answer"}


def apply_threshold(model, tokenizer, conversations: list[dict], rows: list[dict], threshold: float, max_tokens: int,
                    answer_key: str = "answer") -> list[str]:
    """Confidence of each row's answer; answers below the threshold become the abstention sentence. Sets
    row["confidence"] and row[answer_key + "_raw"]; returns the (possibly replaced) answers."""
    from nanochat.rag.confidence import answer_confidence
    from nanochat.rag.confidence import apply_threshold as guard
    out = []
    for conv, row in zip(conversations, rows):
        raw = row[answer_key]
        conf = answer_confidence(model, tokenizer, conv, raw, max_tokens)
        row["confidence"], row[f"{answer_key}_raw"] = conf, raw
        out.append(guard(raw, conf, threshold))
    return out
