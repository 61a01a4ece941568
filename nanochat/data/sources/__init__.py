"""Public datasets converted to the project's documents.jsonl + queries_{split}.jsonl layout."""
