"""Public datasets converted to the project's layout: documents.jsonl + queries_<split>.jsonl (+ manifest.json).

SOURCES is the registry (name -> converter(input, output_dir, seed) -> manifest); the CLI's choices come from it.

    python -m nanochat.data.sources squad --input ../shared/data/squad/dev.json --output data/squad
    python -m nanochat.data.sources hotpotqa --input ../shared/data/hotpotqa/dev.jsonl --output data/hotpotqa
    python -m nanochat.data.sources beir --input ../shared/data/scifact --output data/scifact
"""
from __future__ import annotations

import importlib

SOURCES = {
    "beir": ("nanochat.data.sources.beir", "convert_beir"),
    "squad": ("nanochat.data.sources.squad", "convert_squad"),
    "hotpotqa": ("nanochat.data.sources.hotpotqa", "convert_hotpotqa"),
}


def get_converter(name: str):
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; choose one of: {', '.join(SOURCES)}")
    module, fn = SOURCES[name]
    return getattr(importlib.import_module(module), fn)
