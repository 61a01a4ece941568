"""Public datasets converted to the project's layout: documents.jsonl + queries_<split>.jsonl (+ manifest.json).

nanochat.data.sources.registry.SOURCES lists them; the CLI's choices come from it.

    python -m nanochat.data.sources squad --input ../shared/data/squad/dev.json --output data/squad
    python -m nanochat.data.sources hotpotqa --input ../shared/data/hotpotqa/dev.jsonl --output data/hotpotqa
    python -m nanochat.data.sources beir --input ../shared/data/scifact --output data/scifact
"""
