"""BEIR-format loaders: corpus.jsonl (`_id, title, text`), queries.jsonl (`_id, text`), qrels TSV.

Shapes follow beir's GenericDataLoader, but every record is checked: a bad line raises
`file:line: field: problem` instead of turning into None. `.gz` files are read transparently.

    docs = load_corpus("scifact/corpus.jsonl")          # [{"id", "title", "content", "metadata"}]
    queries = load_queries("scifact/queries.jsonl")     # {qid: text}
    qrels = load_qrels("scifact/qrels/train.tsv")       # {qid: {doc_id: relevance}}
"""
from __future__ import annotations

import gzip
from pathlib import Path

from nanochat.data.jsonl import read_jsonl


def open_text(path):
    """Text handle for a plain or gzip file (detected by magic bytes, not the name)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, "r", encoding="utf-8")


def _field(obj: dict, name: str, where: str, required: bool = True) -> str:
    if name not in obj:
        if required:
            raise ValueError(f"{where}: {name}: missing")
        return ""
    value = obj[name]
    if value is None and not required:
        return ""
    if isinstance(value, int) and not isinstance(value, bool) and name == "_id":
        value = str(value)  # some BEIR dumps have numeric ids
    if not isinstance(value, str):
        raise ValueError(f"{where}: {name}: expected a string, got {type(value).__name__}")
    return value


def load_corpus(path) -> list[dict]:
    """BEIR corpus -> our documents: id, title, content (= text, or the title when text is empty), metadata."""
    docs, seen = [], {}
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        doc_id = _field(obj, "_id", where).strip()
        if not doc_id:
            raise ValueError(f"{where}: _id: empty")
        if doc_id in seen:
            raise ValueError(f"{where}: _id: duplicate id {doc_id!r} (first seen at line {seen[doc_id]})")
        seen[doc_id] = lineno
        title = _field(obj, "title", where, required=False).strip()
        text = _field(obj, "text", where)
        if not text.strip() and not title:
            raise ValueError(f"{where}: text: empty, and so is the title")
        meta = obj.get("metadata")
        docs.append({"id": doc_id, "title": title, "content": text if text.strip() else title,
                     "metadata": meta if isinstance(meta, dict) else {}})
    if not docs:
        raise ValueError(f"{path}: no documents")
    return docs


def load_queries(path) -> dict[str, str]:
    queries = {}
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        qid = _field(obj, "_id", where).strip()
        if qid in queries:
            raise ValueError(f"{where}: _id: duplicate query id {qid!r}")
        text = _field(obj, "text", where)
        if not text.strip():
            raise ValueError(f"{where}: text: empty")
        queries[qid] = text
    return queries


def load_qrels(path) -> dict[str, dict[str, int]]:
    """TSV `query-id corpus-id score` (header line optional) -> {qid: {doc_id: relevance}}."""
    qrels: dict[str, dict[str, int]] = {}
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").rstrip("\r").split("\t")
            if lineno == 1 and parts[0].strip().lower() in ("query-id", "query_id", "qid"):
                continue
            if len(parts) != 3:
                raise ValueError(f"{path}:{lineno}: line: expected 3 tab-separated fields (query-id, corpus-id, score), got {len(parts)}")
            qid, did, score = (p.strip() for p in parts)
            try:
                rel = int(float(score))
            except ValueError:
                raise ValueError(f"{path}:{lineno}: score: expected a number, got {score!r}") from None
            qrels.setdefault(qid, {})[did] = rel
    if not qrels:
        raise ValueError(f"{path}: no qrels rows")
    return qrels


def corpus_to_chunks(docs: list[dict]) -> list[dict]:
    """One chunk per BEIR passage (BEIR passages are already short; chunking would change the task)."""
    from nanochat.data.chunking import count_tokens
    return [{"id": f"{d['id']}#0", "doc_id": d["id"], "chunk_index": 0, "title": d["title"], "content": d["content"],
             "source": None, "metadata": d.get("metadata") or {}, "n_tokens": count_tokens(d["content"]),
             "char_start": 0, "char_end": len(d["content"])} for d in docs]


def convert_beir(input_dir, output_dir, seed: int = 0) -> dict:
    """A BEIR folder (corpus.jsonl[.gz], queries.jsonl, qrels/<split>.tsv) -> documents.jsonl + queries_<split>.jsonl.

    BEIR has no answers: the query files carry gold doc_ids only (retrieval evaluation and retriever training).
    qrels split names map to ours (dev -> val); relevance 0 rows are not gold. `seed` is unused (BEIR's splits are
    given) and accepted so every source converts with the same call.
    """
    from nanochat.common import atomic_write_json
    from nanochat.data.jsonl import write_jsonl
    input_dir, out = Path(input_dir), Path(output_dir)
    corpus = next((input_dir / n for n in ("corpus.jsonl", "corpus.jsonl.gz") if (input_dir / n).is_file()), None)
    if corpus is None:
        raise FileNotFoundError(f"{input_dir}: no corpus.jsonl or corpus.jsonl.gz (a BEIR dataset folder)")
    docs = load_corpus(corpus)
    queries = load_queries(input_dir / "queries.jsonl")
    qrel_files = sorted((input_dir / "qrels").glob("*.tsv"))
    if not qrel_files:
        raise FileNotFoundError(f"{input_dir / 'qrels'}: no <split>.tsv qrels files")
    write_jsonl(out / "documents.jsonl", docs)
    splits = {}
    for f in qrel_files:
        split = {"dev": "val"}.get(f.stem, f.stem)
        qrels = load_qrels(f)
        missing = sorted(set(qrels) - set(queries))
        if missing:
            raise ValueError(f"{f}: query-id {missing[0]!r} (and {len(missing) - 1} more) not in queries.jsonl")
        rows = [{"id": q, "question": queries[q], "answers": [], "doc_ids": sorted(d for d, r in rel.items() if r > 0)}
                for q, rel in sorted(qrels.items())]
        write_jsonl(out / f"queries_{split}.jsonl", [r for r in rows if r["doc_ids"]])
        splits[split] = len(rows)
    manifest = {"source": "beir", "input": str(input_dir), "documents": len(docs), "queries": splits}
    atomic_write_json(out / "manifest.json", manifest)
    return manifest
