"""The sources registry (name -> converter(input, output_dir, seed) -> manifest); the CLI's choices come from it.

Kept out of the package's __init__ so that importing one source does not pull in every converter."""
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
