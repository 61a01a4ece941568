"""SQuAD v1.1 JSON -> our documents.jsonl + queries_{train,val,test}.jsonl.

Documents are the unique paragraphs (title = article title); each question's gold doc_ids is
its paragraph. Splits are by *article* (sorted by a seeded hash, then cut by fractions), so
no test paragraph or article ever appears in training.

    python -m nanochat.data.sources.squad --input /work/shared/data/squad/dev.json --output data/squad
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from nanochat.common import atomic_write_json, sha256_file
from nanochat.data.queries import write_queries
from nanochat.data.jsonl import write_jsonl


def _field(obj, key, typ, where):
    if not isinstance(obj, dict) or not isinstance(obj.get(key), typ):
        raise ValueError(f"{where}: {key}: missing or not a {typ.__name__}")
    return obj[key]


def read_squad(path) -> list[dict]:
    """Articles as [{title, paragraphs: [{id, content, qas: [{id, question, answers}]}]}], validated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SQuAD file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: json: invalid JSON ({e.msg})") from None
    articles = []
    for a, art in enumerate(_field(data, "data", list, str(path))):
        title = _field(art, "title", str, f"{path}: data[{a}]")
        paras = []
        for p, para in enumerate(_field(art, "paragraphs", list, f"{path}: data[{a}]")):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            qas = [{"id": _field(qa, "id", str, f"{where}.qas[{i}]"),
                    "question": _field(qa, "question", str, f"{where}.qas[{i}]").strip(),
                    "answers": list(dict.fromkeys(_field(x, "text", str, f"{where}.qas[{i}].answers")
                                                  for x in _field(qa, "answers", list, f"{where}.qas[{i}]")))}
                   for i, qa in enumerate(_field(para, "qas", list, where))]
            paras.append({"id": f"squad-{a:03d}-{p:02d}", "content": _field(para, "context", str, where), "qas": qas})
        articles.append({"title": title, "paragraphs": paras})
    return articles


def split_articles(titles: list[str], fractions=(0.7, 0.15, 0.15), seed: int = 0) -> dict[str, str]:
    """title -> split; deterministic (hash order), every split non-empty when there are >= 3 articles."""
    order = sorted(titles, key=lambda t: hashlib.sha256(f"{seed}:{t}".encode()).hexdigest())
    n = len(order)
    n_val = max(1, round(n * fractions[1])) if n >= 3 else 0
    n_test = max(1, round(n * fractions[2])) if n >= 3 else 0
    n_train = n - n_val - n_test
    return {t: "train" if i < n_train else "val" if i < n_train + n_val else "test" for i, t in enumerate(order)}


def convert_squad(input_path, output_dir, seed: int = 0, fractions=(0.7, 0.15, 0.15)) -> dict:
    articles = read_squad(input_path)
    split_of = split_articles([a["title"] for a in articles], fractions, seed)
    docs, queries = [], {"train": [], "val": [], "test": []}
    for art in articles:
        for para in art["paragraphs"]:
            docs.append({"id": para["id"], "title": art["title"], "content": para["content"], "source": "squad-v1.1"})
            for qa in para["qas"]:
                queries[split_of[art["title"]]].append({"id": qa["id"], "question": qa["question"],
                                                        "answers": qa["answers"], "doc_ids": [para["id"]], "hops": 1})
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "documents.jsonl", docs)
    for split, rows in queries.items():
        write_queries(out / f"queries_{split}.jsonl", rows)
    manifest = {"source": str(input_path), "source_sha256": sha256_file(input_path), "seed": seed,
                "fractions": list(fractions), "n_documents": len(docs),
                "n_queries": {s: len(r) for s, r in queries.items()},
                "n_articles": {s: sum(v == s for v in split_of.values()) for s in queries}}
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def main(argv=None) -> int:
    from nanochat.data.sources.__main__ import run_source
    return run_source("squad", argv)


if __name__ == "__main__":
    raise SystemExit(main())
