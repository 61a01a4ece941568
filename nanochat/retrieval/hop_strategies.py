"""Hop strategies: how the query of hop h+1 is formed from the question and the documents hop h brought.

STRATEGIES is the registry (name -> function(question, documents, query_fn) -> query); CLI choices, the
config schema and the docs derive from it. Adding a strategy is one function and one entry here.

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
               (e.g. `nanochat.retrieval.multihop.engine_query_writer(engine)` at inference)
"""
from __future__ import annotations

import re
from collections.abc import Callable

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


def _doc_text(doc: dict) -> str:
    title, content = doc.get("title") or "", doc.get("content") or ""
    return f"{title}. {content}" if title else content


def _titles(question: str, documents: list[dict], query_fn=None) -> str:
    titles = [d.get("title") for d in documents if d.get("title")]
    return " ".join([question] + list(dict.fromkeys(titles)))


def _passage(question: str, documents: list[dict], query_fn=None) -> str:
    return f"{question} {_doc_text(documents[0])}"


def _entities(question: str, documents: list[dict], query_fn=None, focused: bool = False) -> str:
    top = documents[0]
    content = top.get("content") or ""
    focus = focus_sentences(content, question, top.get("title") or "") if focused else None
    return " ".join([question] + extract_entities(content, known=f"{question} {top.get('title') or ''}", sentences=focus))


def _focused(question: str, documents: list[dict], query_fn=None) -> str:
    return _entities(question, documents, focused=True)


def _model(question: str, documents: list[dict], query_fn=None) -> str:
    if query_fn is None:
        raise ValueError('strategy="model" needs query_fn(question, documents) -> str (e.g. engine_query_writer(engine))')
    return (query_fn(question, documents) or "").strip() or question


STRATEGIES: dict[str, Callable[..., str]] = {
    "titles": _titles,
    "passage": _passage,
    "entities": _entities,
    "focused": _focused,
    "model": _model,
}
ALIASES = {"append": "entities"}
DEFAULT_STRATEGY = "entities"
NEEDS_MODEL = {"model"}  # strategies that need a query writer (a model) at retrieval time


def offline_choices() -> list[str]:
    """Strategy names (and aliases) usable without a model, e.g. by precomputed retrieval on the command line."""
    return [s for s in STRATEGIES if s not in NEEDS_MODEL] + list(ALIASES)


def resolve_strategy(strategy: str) -> str:
    name = ALIASES.get(strategy, strategy)
    if name not in STRATEGIES:
        raise ValueError(f"unknown hop strategy {strategy!r}; expected one of {', '.join(STRATEGIES)} "
                         f"(aliases: {', '.join(f'{a}={b}' for a, b in ALIASES.items())})")
    return name


def next_hop_query(question: str, documents: list[dict], strategy: str = DEFAULT_STRATEGY,
                   query_fn: Callable[[str, list[dict]], str] | None = None) -> str:
    """The query of the next hop from the question and the documents of this hop (best first)."""
    fn = STRATEGIES[resolve_strategy(strategy)]
    return fn(question, documents, query_fn) if documents else question
