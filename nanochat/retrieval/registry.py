"""Retriever name -> class, imported lazily so `simple`/`bm25` work without the dense extras."""
from __future__ import annotations

import importlib

RETRIEVERS = {
    "simple": ("nanochat.retrieval.simple", "SimpleRetriever"),
    "bm25": ("nanochat.retrieval.bm25", "BM25Retriever"),
    "dense": ("nanochat.retrieval.dense", "DenseRetriever"),
    "hybrid": ("nanochat.retrieval.hybrid", "HybridRetriever"),
}
# hybrid fuses these two, so a KB that offers hybrid must hold both
REQUIRES = {"hybrid": ("dense", "bm25")}
NEEDS_EMBEDDINGS = {"dense", "hybrid"}
DENSE_EXTRAS = {"sentence_transformers", "faiss", "transformers"}
INSTALL_HINT = "pip install sentence-transformers faiss-cpu"


def dense_import_error(e: ImportError, what: str) -> ImportError:
    """The guide's troubleshooting message: the missing module plus how to get it (or avoid it)."""
    missing = getattr(e, "name", None) or str(e)
    return ImportError(f"No module named '{missing}': the {what} needs the dense retrieval extras.\n"
                       f"Install them with: {INSTALL_HINT}\nor use the simple retriever (--type simple).")


def get_retriever_class(name: str):
    if name not in RETRIEVERS:
        raise ValueError(f"unknown retriever type {name!r}; choose one of: {', '.join(RETRIEVERS)}")
    module_name, cls_name = RETRIEVERS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        if (getattr(e, "name", "") or "").split(".")[0] in DENSE_EXTRAS:
            raise dense_import_error(e, f"'{name}' retriever") from e
        raise
    return getattr(module, cls_name)


def expand_types(types) -> list[str]:
    """Requested types plus what they depend on, in build order (dependencies first)."""
    if isinstance(types, str):
        types = [types]
    out: list[str] = []
    for t in types:
        if t not in RETRIEVERS:
            raise ValueError(f"unknown retriever type {t!r}; choose one of: {', '.join(RETRIEVERS)}")
        for dep in REQUIRES.get(t, ()):
            if dep not in out:
                out.append(dep)
        if t not in out:
            out.append(t)
    return in_build_order(out)


def in_build_order(types) -> list[str]:
    """Retriever names in registry order (dependencies before what fuses them); unknown names are an error."""
    unknown = sorted(set(types) - set(RETRIEVERS))
    if unknown:
        raise ValueError(f"unknown retriever type(s) {', '.join(unknown)}; choose from: {', '.join(RETRIEVERS)}")
    order = list(RETRIEVERS)
    return sorted(types, key=order.index)
