"""Old module paths that still work after the library was grouped into stage packages.

`import nanochat.precompute` and `python -m nanochat.precompute` resolve to the module's new home
(the same module object, so classes and monkeypatches are shared). One table, one small finder:
no alias files scattered over the tree. Modules that were split (refrag, training) have no single new home
and are not listed.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "nanochat.documents": "nanochat.data.documents",
    "nanochat.chunking": "nanochat.data.chunking",
    "nanochat.queries": "nanochat.data.queries",
    "nanochat.synthetic": "nanochat.data.synthetic",
    "nanochat.leakage": "nanochat.data.leakage",
    "nanochat.doc_questions": "nanochat.data.doc_questions",
    "nanochat.beir": "nanochat.data.sources.beir",
    "nanochat.squad": "nanochat.data.sources.squad",
    "nanochat.hotpotqa": "nanochat.data.sources.hotpotqa",
    "nanochat.embeddings": "nanochat.retrieval.embeddings",
    "nanochat.precompute": "nanochat.retrieval.precompute",
    "nanochat.multihop": "nanochat.retrieval.multihop",
    "nanochat.retrieval_eval": "nanochat.retrieval.evaluate",
    "nanochat.raft": "nanochat.rag.dataset",  # the CLI that builds a run's RAFT shards
    "nanochat.qa_metrics": "nanochat.rag.metrics",
    "nanochat.rewards": "nanochat.rag.rewards",
    "nanochat.evaluation": "nanochat.rag.evaluation",
    "nanochat.refrag_eval": "nanochat.rag.refrag_eval",
    "nanochat.plots": "nanochat.rag.plots",
    "nanochat.workflow_tools": "nanochat.pipeline.__main__",
}


class _MovedLoader(importlib.abc.Loader):
    """Hands out the new module for an import, and its code for `python -m old.name` (runpy)."""

    def __init__(self, new_name: str):
        self.new_name = new_name

    def create_module(self, spec):
        module = importlib.import_module(self.new_name)
        self.real_spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self.real_spec  # the import system stamped the alias's spec on it; the module keeps its own

    def get_code(self, fullname):
        spec = importlib.util.find_spec(self.new_name)
        return spec.loader.get_code(self.new_name)

    def is_package(self, fullname):
        return False


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        new = importlib.util.find_spec(MOVED[fullname])  # its file becomes sys.argv[0] under python -m
        return importlib.util.spec_from_loader(fullname, _MovedLoader(MOVED[fullname]), origin=new.origin)


def install() -> None:
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
