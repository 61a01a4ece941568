"""Questions built from the documents alone, for users who have documents but no queries.

Two seeded forms, both answerable from exactly one document (the answer's normalised text
occurs in that document and in no other, so retrieval + copying is the only way to answer):
- cloze:  'In "Return Policy": "Customers can return items within ___ of purchase." What fills the blank?'
          answer = a number phrase ("30 days", "$50") or a proper-noun span from the sentence;
- title:  'What does the document about Return Policy say about refunds?'
          answer = the whole sentence mentioning that keyword.
Train/val are split by document, so val questions are about documents never asked about in training.

    python -m nanochat.data.doc_questions --knowledge_base KB --n 500 --output DIR   # -> queries_{train,val}.jsonl
"""
from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import pandas as pd

from nanochat.common import print0
from nanochat.cli import ArgumentParser, output_dir
from nanochat.data.leakage import QUESTION_WORDS
from nanochat.rag.metrics import normalize_answer
from nanochat.data.queries import write_queries

_SENT = re.compile(r"(?<=[.!?])\s+")
_NUMBER = re.compile(r"\$?\d[\d,.]*(?:-\d[\d,.]*)?%?(?:\s+(?:business\s+)?(?:days|hours|minutes|weeks|months|years|"
                     r"percent|dollars|items|people|km|miles))?")
_PROPER = re.compile(r"(?<!^)(?<![.!?]\s)\b[A-Z][a-zA-Z-]+(?:\s+[A-Z][a-zA-Z-]+)*")
_WORD = re.compile(r"[A-Za-z]{5,}")
STOP = {"which", "their", "there", "these", "those", "about", "would", "could", "should", "other", "after",
        "before", "within", "where", "while", "being", "because", "through"}


def _doc_texts(chunks: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """doc_id -> (title, full text in chunk order)."""
    out = {}
    for doc_id, g in chunks.groupby("doc_id", sort=False):
        out[doc_id] = (str(g["title"].iloc[0] or ""), " ".join(g["content"].astype(str)))
    return out


def _candidates(doc_id: str, title: str, text: str):
    """(kind, question, answer, doc_id) for every sentence of one document."""
    for sent in _SENT.split(text):
        sent = sent.strip()
        if len(sent.split()) < 5 or len(sent.split()) > 40:
            continue
        spans = [m.group(0).strip().rstrip(".,") for m in _NUMBER.finditer(sent)]
        spans += [m.group(0) for m in _PROPER.finditer(sent) if m.group(0).split()[0].lower() not in QUESTION_WORDS]
        for span in dict.fromkeys(s for s in spans if normalize_answer(s)):
            blank = sent.replace(span, "___", 1)
            yield "cloze", f'In "{title}": "{blank}" What fills the blank?', span, doc_id
        title_words = set(normalize_answer(title).split())
        keys = [w for w in _WORD.findall(sent) if w.lower() not in STOP and w.lower() not in title_words]
        if keys and title:
            key = max(keys, key=len).lower()
            yield "title", f"What does the document about {title} say about {key}?", sent, doc_id


def questions_from_kb(kb_chunks: pd.DataFrame, n: int, seed: int = 0) -> list[dict]:
    """Up to n query rows {id, question, answers, doc_ids, hops, template}, each answer unique to its document."""
    docs = _doc_texts(kb_chunks)
    norm = {d: f" {normalize_answer(t + ' ' + x)} " for d, (t, x) in docs.items()}
    cands = [c for d, (t, x) in docs.items() for c in _candidates(d, t, x)]
    rng = random.Random(seed)
    rng.shuffle(cands)
    rows, seen = [], set()
    for kind, question, answer, doc_id in cands:
        if len(rows) >= n:
            break
        a = f" {normalize_answer(answer)} "
        if question in seen or sum(a in t for t in norm.values()) != 1:
            continue  # the answer must identify exactly one document
        seen.add(question)
        rows.append({"id": f"docq-{len(rows):05d}", "question": question, "answers": [answer],
                     "doc_ids": [doc_id], "hops": 1, "template": kind})
    return rows


def split_by_document(rows: list[dict], val_fraction: float = 0.1, seed: int = 0) -> tuple[list, list]:
    """(train, val): a document's questions all go to one side, chosen by a seeded hash of its id."""
    docs = sorted({r["doc_ids"][0] for r in rows}, key=lambda d: hashlib.sha256(f"{seed}:{d}".encode()).hexdigest())
    n_val = max(1, round(len(docs) * val_fraction)) if len(docs) > 1 and val_fraction > 0 else 0
    val_docs = set(docs[:n_val])
    return ([r for r in rows if r["doc_ids"][0] not in val_docs], [r for r in rows if r["doc_ids"][0] in val_docs])


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="Generate questions from a knowledge base's documents (no queries file needed).")
    p.add_argument("--knowledge_base", required=True, help="KB directory")
    p.add_argument("--n", type=int, default=2000, help="questions to generate (fewer if the documents run out)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--val_fraction", type=float, default=0.1, help="share of documents whose questions go to val")
    p.add_argument("--output", type=output_dir, required=True, help="directory for queries_train.jsonl and queries_val.jsonl")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from nanochat.retrieval.kb import KnowledgeBase
    rows = questions_from_kb(KnowledgeBase.load(args.knowledge_base).chunks, args.n, args.seed)
    if not rows:
        raise SystemExit(f"{args.knowledge_base}: no question could be built (documents too short or too repetitive)")
    train, val = split_by_document(rows, args.val_fraction, args.seed)
    out = Path(args.output)
    write_queries(out / "queries_train.jsonl", train)
    write_queries(out / "queries_val.jsonl", val)
    print0(f"wrote {len(train)} train and {len(val)} val questions to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
