"""BM25 retriever on bm25s (sparse precomputed scores; numba backend once enough queries pay for its JIT).

Tokenisation: lowercase, words of 2+ characters, English stopwords removed, Snowball stemmer
(PyStemmer) on by default: stemming measured +3 points nDCG@10 on SciFact train. Defaults are
Lucene's BM25 (k1=1.5, b=0.75). The index is saved with bm25s's own `save` (JSON + .npy,
allow_pickle=False) and loaded memory-mapped; our tokenizer settings go in `bm25/tokenizer.json`.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from nanochat.retrieval.base import Retriever

logger = logging.getLogger(__name__)
WORD_RE = re.compile(r"(?u)\b\w\w+\b")  # bm25s's default token pattern
# auto backend: numba's JIT compile (~15 s per process here) pays off only past ~30K queries at numpy's ~2,000
# queries/s vs numba's ~34,000 (bench/bm25_speed.py); a workflow's 7,000-query precompute is faster on numpy
NUMBA_MIN_QUERIES = 30_000
DEFAULTS = {"k1": 1.5, "b": 0.75, "method": "lucene", "idf_method": None, "stemmer": "english", "stopwords": "english", "backend": "auto"}


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
        return True
    except ImportError:
        return False


class Tokenizer:
    """text -> list of terms; the same object is used at index and query time."""

    def __init__(self, stemmer: str | None = "english", stopwords: str | None = "english"):
        from bm25s.stopwords import STOPWORDS_EN
        self.stopwords = frozenset(STOPWORDS_EN) if stopwords == "english" else frozenset()
        self.stemmer_name = stemmer
        self._stem = None
        if stemmer:
            try:
                import Stemmer
                self._stem = Stemmer.Stemmer(stemmer).stemWords
            except ImportError:
                logger.warning("PyStemmer not installed: BM25 runs without stemming (~3 points nDCG lower). pip install PyStemmer")
                self.stemmer_name = None

    def __call__(self, text: str) -> list[str]:
        words = [w for w in WORD_RE.findall(text.lower()) if w not in self.stopwords]
        return self._stem(words) if self._stem else words

    def batch(self, texts: list[str]) -> list[list[str]]:
        return [self(t) for t in texts]


def sorted_vocab_corpus(corpus_tokens: list[list[str]]) -> tuple[list[list[int]], dict[str, int]]:
    """(token ids per document, vocabulary) with ids in sorted term order, for `bm25s.BM25.index`.

    Given token strings, bm25s numbers its vocabulary in the iteration order of a Python set of
    strings, which follows the per-process hash seed (PYTHONHASHSEED): the same chunks gave a
    different vocab.index.json and CSC arrays on every build. Sorted ids make the files a function
    of the chunks alone; scores are unchanged (only the term numbering differs).
    """
    vocab = {term: i for i, term in enumerate(sorted({t for doc in corpus_tokens for t in doc}))}
    return [[vocab[t] for t in doc] for doc in corpus_tokens], vocab


def make_bm25(settings: dict, backend: str):
    import bm25s
    return bm25s.BM25(k1=settings["k1"], b=settings["b"], method=settings["method"], idf_method=settings["idf_method"],
                      backend=backend)


class BM25Retriever(Retriever):
    name = "bm25"

    def __init__(self, model, tokenizer: Tokenizer, num_docs: int, n_threads: int = 0):
        self.model, self.tokenizer, self.num_docs = model, tokenizer, num_docs
        self.n_threads = n_threads  # bm25s: 0 = this thread only, -1 = every core (numba prange)

    @classmethod
    def build(cls, kb_dir, chunks, settings, embeddings=None, tokens=None) -> dict:
        """tokens: per-shard token files (nanochat.retrieval.shards.write_bm25_tokens) of these chunks, in order;
        the index is then built from them, with the same files as tokenizing here."""
        from nanochat.retrieval.kb import atomic_dir, passage_texts
        s = {**DEFAULTS, **(settings or {})}
        unknown = sorted(set(s) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"unknown bm25 setting(s) {unknown}; known: {sorted(DEFAULTS)}")
        tok = Tokenizer(s["stemmer"], s["stopwords"])
        s["stemmer"] = tok.stemmer_name
        model = make_bm25(s, "numpy")  # the index files do not depend on the search backend
        if tokens:
            from nanochat.retrieval.shards import read_bm25_tokens
            corpus = read_bm25_tokens(tokens, chunks, s)
        else:
            corpus = sorted_vocab_corpus(tok.batch(passage_texts(chunks)))
        model.index(corpus, show_progress=True)
        with atomic_dir(Path(kb_dir) / cls.name) as d:
            model.save(str(d), allow_pickle=False, show_progress=False)
            (d / "tokenizer.json").write_text(json.dumps({"pattern": WORD_RE.pattern, "stemmer": s["stemmer"],
                                                          "stopwords": s["stopwords"]}), encoding="utf-8")
        return s

    @classmethod
    def load(cls, kb, backend: str | None = None, n_threads: int = 0) -> "BM25Retriever":
        """backend: numpy | numba | auto (numba once this retriever has been asked for NUMBA_MIN_QUERIES
        queries in all: its JIT compile takes ~10-30 s per process, which fewer queries never earn back).
        n_threads: query threads for bm25s (0 = one, -1 = all cores)."""
        import bm25s
        d = Path(kb.path) / cls.name
        tok_cfg = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
        settings = (kb.manifest.get("retrievers", {}).get(cls.name) or {}).get("settings", {})
        # memory-mapped: the CSC score matrix stays in the KB's files and the OS pages in the columns queries touch
        model = bm25s.BM25.load(str(d), allow_pickle=False, mmap=True, load_corpus=False, verbosity=0)
        model.backend = "numpy"
        r = cls(model, Tokenizer(tok_cfg["stemmer"], tok_cfg["stopwords"]), int(model.scores["num_docs"]), n_threads)
        r.backend = backend or settings.get("backend", "auto")
        if r.backend not in ("auto", "numpy", "numba"):
            raise ValueError(f"bm25 backend must be auto, numpy or numba, got {r.backend!r}")
        if r.backend == "numba":
            r.use_numba()
        return r

    def use_numba(self) -> None:
        if self.model.backend != "numba":
            if not numba_available():
                raise ImportError("bm25 backend 'numba' needs numba: pip install numba (or use backend='numpy')")
            self.model.backend = "numba"
            self.model.compile(activate_numba=True, warmup=False)

    def query_ids(self, queries: list[str]) -> list[list[int]]:
        """Terms -> vocabulary ids; terms the corpus never saw are dropped (they score 0 everywhere).

        Word -> id lookups are memoised: query words repeat a lot, and stemming one word at a time
        was half the cost of a 1,000-query batch.
        """
        cache = self.__dict__.setdefault("_word_ids", {})
        out = []
        for text in queries:
            ids = []
            for w in WORD_RE.findall(text.lower()):
                i = cache.get(w, -2)
                if i == -2:
                    i = self._word_id(w)
                    cache[w] = i
                if i >= 0:
                    ids.append(i)
            out.append(ids)
        return out

    def _word_id(self, word: str) -> int:
        """Vocabulary id of one query word after stopwords and stemming, -1 when it cannot score."""
        terms = self.tokenizer.batch([word])[0] if word not in self.tokenizer.stopwords else []
        vocab = self.model.vocab_dict
        return vocab[terms[0]] if terms and terms[0] in vocab and terms[0] != "" else -1

    def search_batch(self, queries: list[str], top_k: int, show_progress: bool = False):
        q = len(queries)
        idx = np.full((q, top_k), -1, np.int64)
        scores = np.full((q, top_k), -np.inf, np.float32)
        if q == 0:
            return idx, scores
        self.queries_seen = getattr(self, "queries_seen", 0) + q
        if self.backend == "auto" and self.queries_seen >= NUMBA_MIN_QUERIES and numba_available():
            self.use_numba()
        k = min(top_k, self.num_docs)
        ids = self.query_ids(queries)
        live = [i for i, q_ids in enumerate(ids) if q_ids]  # bm25s's empty token has no score column: skip those
        if not live:
            return idx, scores
        docs, sc = self.model.retrieve([ids[i] for i in live], k=k, show_progress=show_progress,
                                     n_threads=self.n_threads)
        docs, sc = np.asarray(docs, np.int64), np.asarray(sc, np.float32)
        hit = sc > 0  # documents sharing no term with the query are not hits
        idx[live, :k] = np.where(hit, docs, -1)
        scores[live, :k] = np.where(hit, sc, -np.inf)
        return idx, scores
