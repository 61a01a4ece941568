"""Conversations with a retrieval message: the prompt shape every training, evaluation and chat path shares.

The tokenizer renders {"messages": [system, retrieval, user, assistant]}; a retrieval message holds either
`documents` (single hop) or `hops` (the guide's multi_hop form). Documents are numbered [1], [2], ... across
hops in message order, and answers cite those numbers.
"""
from __future__ import annotations

import pandas as pd

from nanochat.rag.metrics import ANSWER_MARKER, contains_answer

SYSTEM_PROMPT = ("Answer the question using only the retrieved documents and cite them as [n]. "
                 "If they do not contain the answer, say so.")
MIN_DOC_WORDS = 16  # shortest document budget tried before an example is skipped
# Where an answer's [n] citations go (answer_target's `cite`): after the answer (" Paris [2]") or before it
# (" [2] Paris": the document is chosen first, then read).
CITE_STYLES = ("after", "before")


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

def build_conversation(question: str, documents: list[dict] | None, answer: str | None = None,
                       system: str = SYSTEM_PROMPT) -> dict:
    """The tokenizer's conversation shape; answer=None gives a prompt, documents=None one without retrieval."""
    messages = [{"role": "system", "content": system}]
    if documents is not None:
        messages.append({"role": "retrieval", "documents": documents})
    messages.append({"role": "user", "content": question})
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return {"messages": messages}


def answer_target(answer: str, cited: list[int], quotes: list[str] | None = None, cite: str = "after") -> str:
    """Assistant text for an answer: a leading space makes the answer tokenize exactly as it does inside a
    document (" Hilluxlom" is one BPE token, "Hilluxlom" is two others), so answering is a literal copy.

    With quotes (RAFT's chain of thought): the supporting sentences first, verbatim, then `Answer: <answer>`.
    Each step is then a copy the model can find by matching what it has just written against the documents,
    instead of one jump from the question to the answer span; evaluation scores the part after `Answer:`.
    """
    cites = " ".join(f"[{n}]" for n in cited)
    if cite == "before" and not quotes:
        return f" {cites} {answer.strip()}" if cites else f" {answer.strip()}"
    if quotes:
        return " " + " ".join(quotes) + f" {cites}\n{ANSWER_MARKER} {answer.strip()} {cites}"
    return f" {answer.strip()} {cites}"
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
