"""HotpotQA (distractor, HF `hotpot_qa` JSONL schema) -> our documents.jsonl + queries_{train,val,test}.jsonl.

The corpus is the pool of every question's context paragraphs, one document per distinct title
(title = the Wikipedia title, content = the paragraph's sentences joined; the KB indexes title + text).
A question's gold doc_ids are the paragraphs of its supporting-fact titles (two for every HotpotQA
question), hops = 2. Splits are by a seeded hash of the question id; the corpus is shared by all
splits, as in HotpotQA's distractor setting (paragraphs, not questions, are the retrieval units).

    python -m nanochat.data.sources.hotpotqa --input /work/shared/data/hotpotqa/dev.jsonl --output data/hotpotqa
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from nanochat.common import atomic_write_json, sha256_file
from nanochat.data.queries import write_queries
from nanochat.data.jsonl import read_jsonl, write_jsonl


def doc_id_for(title: str) -> str:
    """Stable id of a paragraph: its title's hash (titles are unique Wikipedia pages)."""
    return "hp-" + hashlib.sha1(title.encode("utf-8")).hexdigest()[:12]


def _need(rec, key, typ, where):
    if not isinstance(rec, dict) or not isinstance(rec.get(key), typ):
        raise ValueError(f"{where}: {key}: missing or not a {typ.__name__}")
    return rec[key]


def read_hotpotqa(path) -> list[dict]:
    """Validated records: [{id, question, answer, type, supporting_titles, context: [(title, text)]}]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"HotpotQA file not found: {path}")
    out = []
    for line_no, rec in read_jsonl(path, what="HotpotQA file"):
        where = f"{path}:{line_no}"
        sf, ctx = _need(rec, "supporting_facts", dict, where), _need(rec, "context", dict, where)
        titles, sents = _need(ctx, "title", list, f"{where}: context"), _need(ctx, "sentences", list, f"{where}: context")
        if len(titles) != len(sents):
            raise ValueError(f"{where}: context: {len(titles)} titles but {len(sents)} sentence lists")
        support = list(dict.fromkeys(_need(sf, "title", list, f"{where}: supporting_facts")))
        missing = [t for t in support if t not in titles]
        if missing:
            raise ValueError(f"{where}: supporting_facts: title(s) {missing} not among the context paragraphs")
        out.append({"id": _need(rec, "id", str, where), "question": _need(rec, "question", str, where).strip(),
                    "answer": _need(rec, "answer", str, where), "type": rec.get("type", ""),
                    "supporting_titles": support,
                    "context": [(t, "".join(s).strip()) for t, s in zip(titles, sents)]})
    if not out:
        raise ValueError(f"{path}: no HotpotQA records found")
    return out


def split_of(qid: str, seed: int, fractions) -> str:
    u = int(hashlib.sha256(f"{seed}:{qid}".encode()).hexdigest(), 16) % 10_000 / 10_000
    return "train" if u < fractions[0] else "val" if u < fractions[0] + fractions[1] else "test"


def convert_hotpotqa(input_path, output_dir, seed: int = 0, fractions=(0.8, 0.1, 0.1)) -> dict:
    """Write documents.jsonl, queries_{train,val,test}.jsonl, queries_all.jsonl and manifest.json."""
    records = read_hotpotqa(input_path)
    docs: dict[str, dict] = {}
    by_text: dict[str, str] = {}  # identical paragraphs under two titles are one document (validator rule)
    alias: dict[str, str] = {}    # title -> id of the document that holds its paragraph
    conflicts = 0
    for rec in records:
        for title, text in rec["context"]:
            if not text or title in alias:
                conflicts += title in alias and docs[alias[title]]["content"] != text
                continue
            d = by_text.get(text) or doc_id_for(title)
            alias[title] = d
            if d not in docs:
                by_text[text] = d
                docs[d] = {"id": d, "title": title, "content": text, "source": "hotpotqa-distractor-dev"}
    queries = {"train": [], "val": [], "test": []}
    for rec in records:
        gold = list(dict.fromkeys(alias.get(t, doc_id_for(t)) for t in rec["supporting_titles"]))
        queries[split_of(rec["id"], seed, fractions)].append(
            {"id": rec["id"], "question": rec["question"], "answers": [rec["answer"]], "doc_ids": gold,
             "hops": 2, "type": rec["type"]})
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "documents.jsonl", list(docs.values()))
    for split, rows in queries.items():
        write_queries(out / f"queries_{split}.jsonl", rows)
    write_queries(out / "queries_all.jsonl", [q for rows in queries.values() for q in rows])
    manifest = {"source": str(input_path), "source_sha256": sha256_file(input_path), "seed": seed,
                "fractions": list(fractions), "n_documents": len(docs), "n_title_conflicts": conflicts,
                "n_queries": {s: len(r) for s, r in queries.items()}}
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def main(argv=None) -> int:
    from nanochat.data.sources.__main__ import run_source
    return run_source("hotpotqa", argv)


if __name__ == "__main__":
    raise SystemExit(main())
