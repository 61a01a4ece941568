"""Multi-hop retrieval (REFRAG's retrieval half): up to max_hops rounds of top_k_per_hop new documents.

Hop 1 searches with the question. The query of hop h+1 is built from the question and the documents
hop h brought, by a named, deterministic strategy:

    titles     question + titles of hop h's documents
    passage    question + the whole top passage of hop h (MDR-style query expansion)
    entities   question + bridge entities named inside the top passage of hop h that the question and
               the passage's own title do not already name (capitalised word runs that do not start a
               sentence). On HotpotQA this is the one that pays: +10 points "both supporting paragraphs
               retrieved" at equal budget (shared/notes/retrieval_baselines.md). Default; "append" is an
               alias (the precompute CLI's default name).
    focused    entities, but only those of the top passage's sentences that share the most word stems
               with the question ("founder" / "founded by X"): the bridge the question asks about, not every
               name in the passage. Falls back to entities when no sentence shares a stem.
    model      a callable writes the follow-up query: query_fn(question, hop_documents) -> str
               (e.g. `engine_query_writer(engine)` at inference)

Documents already retrieved are never returned again: each hop fetches deep enough to still have
top_k_per_hop unseen chunks and filters. A question stops early when a hop brings nothing new. Every
hop is one `search_batch` call over all still-active questions.

Rows (one per retrieved chunk) feed the precomputed retrieval table (nanochat.retrieval.precompute):
    {query_index, hop, hop_query, rank (1-based within the hop), chunk_index, chunk_id, doc_id, score}
`retrieval_message(...)` renders them as the guide's multi_hop retrieval message.
"""
from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
from tqdm import tqdm

STRATEGIES = ("titles", "passage", "entities", "focused", "model")
ALIASES = {"append": "entities"}
MAX_ENTITIES = 16  # bridge entities appended to a follow-up query (16 > 8 by ~1 point on HotpotQA bm25)
STEM_CHARS = 5  # focused: question and sentence words meet on their first 5 letters
_CUE_STOP = {"which", "what", "where", "when", "whom", "whose", "does", "did", "with", "from", "that", "this",
             "than", "then", "there", "their", "they", "have", "been", "were", "into", "also", "about", "after",
             "before", "other", "same", "many", "much", "more", "most", "name", "named", "both", "either"}

# words keep inner periods so initials and abbreviations stay whole ("C.J.", "U.S."); ! and ? are tokens
# of their own so that sentence ends can be seen (other punctuation is skipped: "Paris, France" is one run)
_TOKEN = re.compile(r"[^\W_][\w'\-.]*|[!?]", re.UNICODE)
_INITIALS = re.compile(r"(?:[^\W\d_]\.)+")
_YEAR = re.compile(r"1[0-9]{3}|20[0-9]{2}")
# capitalised function words that are not names even mid-sentence (and common sentence openers)
_NOT_NAMES = {"The", "A", "An", "In", "On", "At", "Of", "And", "Or", "It", "Its", "He", "She", "They", "His", "Her",
              "This", "That", "These", "Those", "I", "We", "You", "But", "For", "By", "As", "To", "From", "With",
              "When", "Where", "What", "Which", "Who", "After", "Before", "During", "Since", "While", "There", "Their",
              "Also", "However", "Although", "Following", "Born", "Is", "Was", "Are", "Were", "Not", "If", "So", "Then",
              "Upon", "Many", "Most", "Some", "One", "Two", "Both", "All", "Each", "Other", "Such"}


def resolve_strategy(strategy: str) -> str:
    name = ALIASES.get(strategy, strategy)
    if name not in STRATEGIES:
        raise ValueError(f"unknown hop strategy {strategy!r}; expected one of {', '.join(STRATEGIES)} "
                         f"(aliases: {', '.join(f'{a}={b}' for a, b in ALIASES.items())})")
    return name


# -----------------------------------------------------------------------------
# Follow-up query formation

def _clean(word: str) -> str:
    """Drop a sentence's trailing period from a word, but not from initials ("J.", "U.S.")."""
    return word[:-1] if word.endswith(".") and not _INITIALS.fullmatch(word) else word


def _words(text: str) -> set[str]:
    return {_clean(w).lower() for w in _TOKEN.findall(text or "") if w[:1].isalnum()}


def _ends_sentence(raw: str) -> bool:
    """A period ends a sentence unless it closes initials ("C.J. Hunter", "U.S. Army")."""
    return raw in ("!", "?") or (raw.endswith(".") and not _INITIALS.fullmatch(raw))


def _stems(text: str) -> set[str]:
    """Crude stems (first STEM_CHARS letters) of the lower-case content words of a text: "founder" and
    "founded" meet, names (capitalised) and question words do not count."""
    return {w.lower()[:STEM_CHARS] for w in _TOKEN.findall(text or "")
            if w[:1].islower() and len(w) >= 4 and w.lower() not in _CUE_STOP}


def focus_sentences(passage: str, question: str, title: str = "") -> set[int] | None:
    """Indices of the passage sentences sharing the most stems with the question, or None when no sentence
    shares any (then every sentence counts). "In which country is Acme headquartered?" -> the sentence
    "Acme is headquartered in Paxhil.", whose name is the bridge. Words of the passage's title do not count
    ("the Acme lamp": every sentence says "lamp")."""
    cue = _stems(question) - _stems(title)
    sentences, current = [], []
    for raw in _TOKEN.findall(passage or ""):
        current.append(raw)
        if _ends_sentence(raw):
            sentences.append(current)
            current = []
    sentences.append(current)
    scores = [len(cue & _stems(" ".join(words))) for words in sentences]
    best = max(scores)
    return {i for i, sc in enumerate(scores) if sc == best} if best > 0 else None


def extract_entities(passage: str, known: str = "", max_entities: int = MAX_ENTITIES,
                     sentences: set[int] | None = None) -> list[str]:
    """Named entities of a passage not already named in `known`, in order of first mention.

    Crude on purpose, no NER model: runs of capitalised words (numbers may continue a run) and
    standalone years. A sentence's first word counts only when the passage never uses it in lower case
    ("Menotti wrote ..." is a name, "Despite ..." is not) and it is not a function word. An entity is
    dropped when every one of its words already occurs in `known` (question + the passage's title).
    Measured on the shared HotpotQA dev subset (see bench/multihop_hotpotqa.py): the sentence-start
    rule and years added ~1 point each over "capitalised words not starting a sentence".
    `sentences` (indices, see focus_sentences) keeps only the entities of those sentences.
    """
    known_words = _words(known)
    tokens = _TOKEN.findall(passage or "")
    lower_words = {w for w in map(_clean, tokens) if w[:1].islower()}
    found: list[str] = []
    wanted = True

    def add(run: list[str]) -> None:
        phrase = " ".join(run)
        if wanted and phrase not in found and not all(x.lower() in known_words for x in run):
            found.append(phrase)

    run: list[str] = []
    starts = True  # the first word of a sentence
    sentence = 0
    for raw in tokens + ["!"]:  # the sentinel flushes the last run
        w = _clean(raw)
        if starts and run:  # a name never runs across a sentence end ("... in Oslo. Maria Lund ...")
            add(run)
            run = []
        wanted = sentences is None or sentence in sentences
        name = w[:1].isupper() and w not in _NOT_NAMES and (not starts or w.lower() not in lower_words)
        if name or (run and w[:1].isdigit()):
            run.append(w)
        else:
            if run:
                add(run)
                run = []
            if _YEAR.fullmatch(w):
                add([w])
        starts = _ends_sentence(raw)
        sentence += starts
    return found[:max_entities]


def _doc_text(doc: dict) -> str:
    title, content = doc.get("title") or "", doc.get("content") or ""
    return f"{title}. {content}" if title else content


def next_hop_query(question: str, documents: list[dict], strategy: str = "entities",
                   query_fn: Callable[[str, list[dict]], str] | None = None) -> str:
    """The query of the next hop from the question and the documents of this hop (best first)."""
    strategy = resolve_strategy(strategy)
    if not documents:
        return question
    top = documents[0]
    if strategy == "titles":
        titles = [d.get("title") for d in documents if d.get("title")]
        return " ".join([question] + list(dict.fromkeys(titles)))
    if strategy == "passage":
        return f"{question} {_doc_text(top)}"
    if strategy in ("entities", "focused"):
        content = top.get("content") or ""
        focus = focus_sentences(content, question, top.get("title") or "") if strategy == "focused" else None
        ents = extract_entities(content, known=f"{question} {top.get('title') or ''}", sentences=focus)
        return " ".join([question] + ents)
    if query_fn is None:
        raise ValueError('strategy="model" needs query_fn(question, documents) -> str (e.g. engine_query_writer(engine))')
    q = (query_fn(question, documents) or "").strip()
    return q or question


# -----------------------------------------------------------------------------
# The hop loop

def multihop_retrieve(manager, questions: list[str], max_hops: int = 3, top_k_per_hop: int = 3,
                      strategy: str = "entities", query_fn=None, batch_size: int = 256,
                      show_progress: bool = True) -> list[dict]:
    """Batched multi-hop retrieval -> rows (see module docstring), ordered by (question, hop, rank).

    manager: a RetrievalManager (or anything with `.search_batch(queries, k)` and `.kb.chunks`).
    """
    if max_hops < 1 or top_k_per_hop < 1:
        raise ValueError(f"max_hops={max_hops}, top_k_per_hop={top_k_per_hop}: both must be >= 1")
    strategy = resolve_strategy(strategy)
    chunks = manager.kb.chunks
    n_chunks = len(chunks)
    cid, did = chunks["id"].to_numpy(), chunks["doc_id"].to_numpy()
    titles, contents = chunks["title"].to_numpy(), chunks["content"].to_numpy()
    seen: list[set[int]] = [set() for _ in questions]
    current = list(questions)             # query of the coming hop, per question
    active = list(range(len(questions)))  # questions still hopping
    rows: list[dict] = []
    bar = tqdm(total=max_hops, desc="multi-hop", unit="hop", disable=not show_progress)
    for hop in range(1, max_hops + 1):
        if not active:
            break
        # seen sets hold <= (hop-1)*k chunks, so this depth still leaves k unseen ones when they exist
        depth = min(n_chunks, top_k_per_hop * hop)
        still = []
        for start in range(0, len(active), batch_size):
            batch = active[start:start + batch_size]
            idx, scores = manager.search_batch([current[q] for q in batch], depth)  # (Qb, depth) each
            idx, scores = np.asarray(idx), np.asarray(scores)
            for row_i, q in enumerate(batch):
                new = [(int(i), float(s)) for i, s in zip(idx[row_i], scores[row_i]) if i >= 0 and int(i) not in seen[q]]
                new = new[:top_k_per_hop]
                if not new:
                    continue  # nothing new: this question stops here
                for rank, (i, s) in enumerate(new, 1):
                    seen[q].add(i)
                    rows.append({"query_index": q, "hop": hop, "hop_query": current[q], "rank": rank,
                                 "chunk_index": i, "chunk_id": cid[i], "doc_id": did[i], "score": s})
                if hop < max_hops:
                    docs = [{"title": titles[i], "content": contents[i]} for i, _ in new]
                    current[q] = next_hop_query(questions[q], docs, strategy, query_fn)
                    still.append(q)
        active = still
        bar.update(1)
    bar.close()
    rows.sort(key=lambda r: (r["query_index"], r["hop"], r["rank"]))
    return rows


# -----------------------------------------------------------------------------
# Rendering: rows -> the guide's multi_hop retrieval message

def group_hops(rows, key: str = "query_id") -> dict:
    """Rows (dicts or a DataFrame) -> {key value: [(hop, hop_query, [(chunk_id, doc_id, score), ...]), ...]}."""
    if hasattr(rows, "to_dict"):
        rows = rows.sort_values([key, "hop", "rank"], kind="stable").to_dict("records")
    out: dict = {}
    for r in rows:
        hops = out.setdefault(r[key], [])
        if not hops or hops[-1][0] != int(r["hop"]):
            hops.append((int(r["hop"]), r["hop_query"], []))
        hops[-1][2].append((r["chunk_id"], r["doc_id"], float(r["score"])))
    return out


def retrieval_message(hops: list[tuple], doc_for: Callable[[str, float], dict]) -> dict:
    """[(hop, query, [(chunk_id, doc_id, score)])] -> {"role": "retrieval", "multi_hop": True, "hops": [...]}.

    doc_for(chunk_id, score) gives the document dict (title, content, ...), e.g. raft.ChunkStore.doc.
    """
    return {"role": "retrieval", "multi_hop": True,
            "hops": [{"hop": h, "query": q, "documents": [doc_for(c, s) for c, _, s in hits]} for h, q, hits in hops]}


def engine_query_writer(engine, max_tokens: int = 32, max_doc_words: int = 60) -> Callable[[str, list[dict]], str]:
    """strategy="model": the model itself writes the follow-up query from the question and the hop's documents."""
    def write(question: str, documents: list[dict]) -> str:
        docs = [{**d, "content": " ".join((d.get("content") or "").split()[:max_doc_words])} for d in documents]
        conv = {"messages": [
            {"role": "system", "content": "Write one search query for the information still missing to answer the question."},
            {"role": "retrieval", "documents": docs}, {"role": "user", "content": question}]}
        text, _ = engine.generate_from_conversation(conv, max_tokens=max_tokens, temperature=0.0)
        return f"{question} {text.strip()}"
    return write


def main(argv=None) -> int:
    """Show the hops for a few questions: python -m nanochat.retrieval.multihop --knowledge_base KB --question "..." """
    from nanochat.cli import ArgumentParser
    p = ArgumentParser(description="Multi-hop retrieval for one or more questions (prints hops)")
    p.add_argument("--knowledge_base", required=True, help="KB directory")
    p.add_argument("--retriever_type", default="bm25", help="simple|bm25|dense|hybrid")
    p.add_argument("--question", action="append", required=True, help="question (repeat for several)")
    p.add_argument("--max_hops", type=int, default=3, help="retrieval rounds")
    p.add_argument("--top_k_per_hop", type=int, default=3, help="new documents per round")
    p.add_argument("--hop_strategy", default="entities", choices=list(STRATEGIES[:3]) + list(ALIASES),
                   help="follow-up query strategy")
    args = p.parse_args(argv)
    from nanochat.retrieval import RetrievalManager
    manager = RetrievalManager(retriever_type=args.retriever_type, knowledge_base_path=args.knowledge_base)
    rows = multihop_retrieve(manager, args.question, args.max_hops, args.top_k_per_hop, args.hop_strategy,
                             show_progress=False)
    for qi, hops in group_hops(rows, key="query_index").items():
        print(f"Q: {args.question[qi]}")
        for h, q, hits in hops:
            print(f"  hop {h}: {q}")
            for c, d, s in hits:
                print(f"    {s:8.3f}  {c}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
