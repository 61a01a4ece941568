"""Train/held-out leakage check: a held-out score means nothing if its questions were trained on.

Three kinds of leak, per held-out question:
- exact:       the same question text appears in training;
- normalised:  equal after lowercasing and folding punctuation/whitespace;
- answer:      a training question about the same entity (a shared gold doc_id, the same
               `entity` field, or a shared proper-noun span in the question) has a target equal
               to this question's answer (SQuAD-normalised).
The leak rate is leaked held-out questions / held-out questions; above --max_leak_rate
(default 0.0) the check fails (exit 1 / LeakageError).

    python -m nanochat.data.leakage --train q_train.jsonl --heldout val=q_val.jsonl test=q_test.jsonl --output leakage.json
"""
from __future__ import annotations

import re
import string
from pathlib import Path

from nanochat.cli import ArgumentParser, output_file
from nanochat.common import atomic_write_json, print0
from nanochat.rag.metrics import normalize_answer
from nanochat.data.queries import load_queries

# capitalised words that start questions rather than name things: question words, auxiliaries, articles, the
# prepositions a question can open with ("Along which river ...") and the imperatives of "Name the ..."
QUESTION_WORDS = {"what", "when", "where", "who", "whom", "whose", "which", "why", "how", "in", "on", "at", "for",
                  "is", "are", "was", "were", "does", "did", "do", "the", "a", "an", "from", "by", "to", "of", "can",
                  "along", "into", "with", "about", "after", "before", "during", "near", "under", "over", "between",
                  "through", "across", "behind", "beside", "beyond", "within", "without", "since", "until", "upon",
                  "against", "among", "around", "toward", "towards", "has", "have", "had", "will", "would", "could",
                  "should", "name", "list", "tell", "give"}
_PUNCT_TABLE = str.maketrans({c: " " for c in string.punctuation})
_CAPS = re.compile(r"\b[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*")


class LeakageError(RuntimeError):
    """Leak rate above the allowed threshold."""


def normalize_question(q: str) -> str:
    return " ".join(q.lower().translate(_PUNCT_TABLE).split())


def entity_keys(row: dict) -> set[str]:
    """What a question is about: gold doc ids, its `entity` field, its proper-noun spans."""
    keys = {f"doc:{d}" for d in row.get("doc_ids") or []}
    if row.get("entity"):
        keys.add(f"ent:{normalize_question(row['entity'])}")
    for span in _CAPS.findall(row["question"]):
        words = span.split()
        while words and words[0].lower() in QUESTION_WORDS:
            words = words[1:]
        if words:
            keys.add(f"ent:{normalize_question(' '.join(words))}")
    return keys


def find_leaks(train: list[dict], heldout: list[dict], max_examples: int = 20) -> dict:
    """Counts and examples of each leak kind for one held-out split."""
    exact = {r["question"].strip(): r["id"] for r in train}
    normal = {normalize_question(r["question"]): r["id"] for r in train}
    targets: dict[str, dict[str, str]] = {}  # entity key -> {normalised answer: train id}
    for r in train:
        for k in entity_keys(r):
            for a in r["answers"]:
                targets.setdefault(k, {}).setdefault(normalize_answer(a), r["id"])
    kinds = {"exact": [], "normalized": [], "answer_same_entity": []}
    leaked = set()
    for r in heldout:
        hit = None
        if r["question"].strip() in exact:
            hit = ("exact", exact[r["question"].strip()])
        elif normalize_question(r["question"]) in normal:
            hit = ("normalized", normal[normalize_question(r["question"])])
        else:
            answers = {normalize_answer(a) for a in r["answers"]} - {""}
            for k in sorted(entity_keys(r)):
                same = answers & set(targets.get(k, {}))
                if same:
                    hit = ("answer_same_entity", targets[k][sorted(same)[0]], k)
                    break
        if hit:
            leaked.add(r["id"])
            kinds[hit[0]].append({"heldout_id": r["id"], "question": r["question"], "train_id": hit[1],
                                  **({"shared": hit[2]} if len(hit) > 2 else {})})
    n = len(heldout)
    return {"n_heldout": n, "n_leaked": len(leaked), "leak_rate": round(len(leaked) / n, 6) if n else 0.0,
            "counts": {k: len(v) for k, v in kinds.items()},
            "examples": {k: v[:max_examples] for k, v in kinds.items()}}


def check_leakage(train_path, heldout_paths: dict, output_path=None, max_leak_rate: float = 0.0) -> dict:
    """Report per held-out split; write JSON (atomic); raise LeakageError above max_leak_rate."""
    train = load_queries(train_path)
    report = {"train": str(train_path), "n_train": len(train), "max_leak_rate": max_leak_rate, "splits": {}}
    for split, path in heldout_paths.items():
        report["splits"][split] = {"path": str(path), **find_leaks(train, load_queries(path))}
    worst = max((s["leak_rate"] for s in report["splits"].values()), default=0.0)
    report["leak_rate"], report["passed"] = worst, worst <= max_leak_rate
    if output_path:
        atomic_write_json(output_path, report)
    if not report["passed"]:
        summary = ", ".join(f"{s}: {v['n_leaked']}/{v['n_heldout']} {v['counts']}" for s, v in report["splits"].items())
        raise LeakageError(f"leak rate {worst:.4f} exceeds --max_leak_rate {max_leak_rate} ({summary}); "
                           f"see {output_path or 'the report'} for examples")
    return report


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="Check held-out queries for leakage from the training queries.")
    p.add_argument("--train", required=True, help="training queries JSONL")
    p.add_argument("--heldout", nargs="+", required=True, help="split=path pairs, e.g. val=v.jsonl test=t.jsonl")
    p.add_argument("--output", type=output_file, required=True, help="JSON report path")
    p.add_argument("--max_leak_rate", type=float, default=0.0, help="fail above this share of leaked held-out questions")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    heldout = {}
    for item in args.heldout:
        split, sep, path = item.partition("=")
        if not sep:
            split, path = Path(item).stem, item
        heldout[split] = path
    try:
        report = check_leakage(args.train, heldout, args.output, args.max_leak_rate)
    except LeakageError as e:
        print0(f"LEAKAGE: {e}")
        return 1
    print0(f"no leakage above {args.max_leak_rate}: " +
          ", ".join(f"{s} {v['n_leaked']}/{v['n_heldout']}" for s, v in report["splits"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
