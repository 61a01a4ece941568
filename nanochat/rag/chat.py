"""Answering questions from a knowledge base with a fine-tuned model: the path the terminal chat
(scripts.rag_chat) and the served chat (scripts.rag_web) share.

    pipeline = ChatPipeline.from_checkpoint(engine, manager, meta, source="refrag")
    answer = pipeline.answer("Where was the founder of Zorvik Labs born?")
    answer.text, answer.hops, answer.documents, answer.citations

RAG retrieves once (top_k documents). REFRAG runs the hops the model was trained with: max_hops rounds of
top_k_per_hop new documents, the next hop's query formed by the checkpoint's hop_strategy
(nanochat.retrieval.multihop). Documents are numbered [1], [2], ... across hops in prompt order, as the
tokenizer renders them, so a citation [n] names one document whichever hop brought it. Many questions are
retrieved and answered side by side (`answer_many`): one search per hop for all of them, one batched decode.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from nanochat.engine import parse_citations
from nanochat.rag.conversation import SYSTEM_PROMPT, ChunkStore, build_conversation, multihop_conversation, truncate_words
from nanochat.retrieval.hop_strategies import DEFAULT_STRATEGY, resolve_strategy

SNIPPET_WORDS = 40  # words of a document shown under its title


@dataclass
class Prepared:
    """A question ready to generate: its prompt ids and what the prompt shows."""
    question: str
    prompt: list[int]
    documents: list[dict]  # in prompt order: document n is documents[n - 1]; each has n, hop, title, content, ...
    hops: list[dict]       # [{"hop": 1, "query": str, "documents": [n, ...]}]; one hop for RAG


@dataclass
class Answer:
    question: str
    text: str
    documents: list[dict]
    hops: list[dict]
    citations: list[int] = field(default_factory=list)  # the [n] of the text that name a shown document, in order
    stopped: str = ""  # stop_token | max_tokens | context | cancelled
    num_prompt_tokens: int = 0
    num_tokens: int = 0

    def cited_documents(self) -> list[dict]:
        return [self.documents[n - 1] for n in self.citations]


def _numbered(doc: dict, n: int, hop: int) -> dict:
    content = doc.get("content") or ""
    return {"n": n, "hop": hop, "id": doc.get("id"), "doc_id": doc.get("doc_id"), "title": doc.get("title") or "",
            "content": content, "snippet": truncate_words(content, SNIPPET_WORDS), "source": doc.get("source"),
            "score": None if doc.get("score") is None else round(float(doc["score"]), 4)}


class ChatPipeline:
    """Retrieve, render, generate. mode "rag": one retrieval of top_k; mode "refrag": max_hops x top_k_per_hop."""

    def __init__(self, engine, manager, mode: str = "rag", top_k: int = 5, max_doc_length: int | None = None,
                 max_hops: int = 2, top_k_per_hop: int = 3, hop_strategy: str = DEFAULT_STRATEGY,
                 max_tokens: int = 200, system: str = SYSTEM_PROMPT, abstain_threshold: float | None = None):
        if mode not in ("rag", "refrag"):
            raise ValueError(f"mode must be rag or refrag, got {mode!r}")
        self.engine, self.manager, self.mode = engine, manager, mode
        self.top_k, self.max_hops, self.top_k_per_hop = top_k, max_hops, top_k_per_hop
        self.max_doc_length = None if max_doc_length is None or max_doc_length < 0 else max_doc_length
        self.hop_strategy = resolve_strategy(hop_strategy)
        self.max_tokens, self.system = max_tokens, system
        self.abstain_threshold = abstain_threshold  # see nanochat.rag.confidence; None = answer as generated
        self._store = None

    @classmethod
    def from_checkpoint(cls, engine, manager, meta: dict, source: str, max_tokens: int = 200, top_k: int | None = None,
                        hop_strategy: str | None = None, abstain_threshold: float | None = None) -> "ChatPipeline":
        """The retrieval the checkpoint was fine-tuned with (its meta): REFRAG's hops and strategy, RAG's top_k, and
        the fine-tune's document length."""
        args = meta.get("args", {})
        refrag = source == "refrag" or meta.get("mode") == "refrag" or "max_hops" in meta
        return cls(engine, manager, mode="refrag" if refrag else "rag", top_k=top_k or args.get("top_k") or 5,
                   max_doc_length=args.get("max_doc_length"),
                   max_hops=int(meta.get("max_hops") or args.get("max_hops") or 2),
                   top_k_per_hop=int(top_k or meta.get("top_k_per_hop") or args.get("top_k_per_hop") or 3),
                   hop_strategy=hop_strategy or meta.get("hop_strategy") or args.get("hop_strategy") or DEFAULT_STRATEGY,
                   max_tokens=max_tokens, abstain_threshold=abstain_threshold)

    def describe(self) -> str:
        if self.mode == "refrag":
            return f"REFRAG: {self.max_hops} hops x {self.top_k_per_hop} documents, hop strategy {self.hop_strategy}"
        return f"RAG: top {self.top_k} documents"

    # ---- retrieval and prompts

    def prompt_budget(self, max_tokens: int | None = None) -> int:
        seq_len = self.engine.model.config.sequence_len
        return max(seq_len - (max_tokens or self.max_tokens), seq_len // 2)

    def prepare_many(self, questions: list[str], max_tokens: int | None = None, errors: str = "raise") -> list:
        """Retrieve for all questions at once and render each prompt within the model's context -> Prepared each.

        A question too long for the prompt budget raises ValueError; with errors="return" its place holds the
        ValueError instead, and the other questions go on (the server answers each request on its own)."""
        budget = self.prompt_budget(max_tokens)
        if self.mode == "refrag":
            retrieved, render = self._hops(questions), self._prepare_multihop
        else:
            retrieved, render = self.manager.retrieve_batch(questions, self.top_k), self._prepare_single
        out = []
        for q, r in zip(questions, retrieved):
            try:
                out.append(render(q, r, budget))
            except ValueError as e:
                if errors == "raise":
                    raise
                out.append(e)
        return out

    def _prepare_single(self, question: str, docs, budget: int) -> Prepared:
        shown = []
        for d in docs:
            row = d.to_dict()
            row["doc_id"] = row.get("metadata", {}).get("doc_id")
            row["content"] = truncate_words(row["content"], self.max_doc_length)
            shown.append(row)
        conv = build_conversation(question, shown, system=self.system)
        ids, info = self.engine.tokenizer.render_for_completion(conv, max_tokens=budget, on_overflow="report")
        if info["cut_tokens"]:
            raise ValueError(f"the question alone is longer than the model's prompt budget ({budget} tokens)")
        shown = shown[:len(shown) - len(info["dropped_docs"])]  # the tokenizer drops documents from the end
        documents = [_numbered(d, n, 1) for n, d in enumerate(shown, 1)]
        return Prepared(question, ids, documents, [{"hop": 1, "query": question, "documents": [d["n"] for d in documents]}])

    def _hops(self, questions: list[str]) -> list[list[tuple]]:
        from nanochat.retrieval.multihop import group_hops, multihop_retrieve
        rows = multihop_retrieve(self.manager, questions, self.max_hops, self.top_k_per_hop, self.hop_strategy,
                                 show_progress=False)
        by_question = group_hops(rows, key="query_index")
        return [by_question.get(i, []) for i in range(len(questions))]

    def _prepare_multihop(self, question: str, hops: list[tuple], budget: int) -> Prepared:
        from nanochat.rag.multihop_data import fit_prompt
        from nanochat.retrieval.multihop import retrieval_message
        if self._store is None:
            self._store = ChunkStore(self.manager.kb.chunks)
        doc_ids = {c: d for _, _, hits in hops for c, d, _ in hits}
        message = retrieval_message(hops, lambda c, s: {**self._store.doc(c, s, self.max_doc_length), "doc_id": doc_ids[c]})
        fit = fit_prompt(self.engine.tokenizer, {"question": question, "message": message}, budget)
        if fit is None:
            raise ValueError(f"the question alone is longer than the model's prompt budget ({budget} tokens)")
        ids, message = fit  # documents (and hop queries) shortened to fit, as in training
        conv = multihop_conversation(question, message, system=self.system)
        _, info = self.engine.tokenizer.render_for_completion(conv, max_tokens=budget, on_overflow="report")
        keep = sum(len(h["documents"]) for h in message["hops"]) - len(info["dropped_docs"])
        documents, out_hops = [], []
        for hop in message["hops"]:
            numbers = []
            for d in hop["documents"]:
                if len(documents) < keep:
                    documents.append(_numbered(d, len(documents) + 1, hop["hop"]))
                    numbers.append(len(documents))
            out_hops.append({"hop": hop["hop"], "query": hop["query"], "documents": numbers})
        return Prepared(question, ids, documents, out_hops)

    # ---- answers

    def finish(self, prepared: Prepared, generation) -> Answer:
        text = self.engine.tokenizer.decode(generation.tokens).strip()
        if self.abstain_threshold is not None and generation.tokens:
            from nanochat.rag.confidence import apply_threshold, token_probabilities
            probs = token_probabilities(self.engine.model, prepared.prompt, list(generation.tokens))
            text = apply_threshold(text, sum(probs) / len(probs), self.abstain_threshold)
        cites = [n for n in parse_citations(text) if 1 <= n <= len(prepared.documents)]
        return Answer(prepared.question, text, prepared.documents, prepared.hops, cites, generation.stopped,
                      generation.num_prompt_tokens, len(generation.tokens))

    def answer_many(self, questions: list[str], max_tokens: int | None = None, batch_size: int | None = None,
                    temperature: float = 0.0, seed: int = 42) -> list[Answer]:
        """Answers to many questions, retrieved together and decoded side by side (greedy by default)."""
        prepared = self.prepare_many(questions, max_tokens)
        gens = self.engine.generate_many([p.prompt for p in prepared], max_tokens or self.max_tokens,
                                         temperature=temperature, seed=seed, batch_size=batch_size)
        return [self.finish(p, g) for p, g in zip(prepared, gens)]

    def answer(self, question: str, max_tokens: int | None = None) -> Answer:
        return self.answer_many([question], max_tokens)[0]
