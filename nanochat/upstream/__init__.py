"""Upstream nanochat interoperability: its checkpoints of each era (eras.py), its tokenizer.pkl (tokenizer_pkl.py,
bpe.py), and export back to its layout (export.py).

Nothing is imported here: the tokenizer needs only the pickle reader and the BPE rebuild, and must not pull in the
model (a rule that only tokenises would otherwise depend on gpt.py; nanochat/pipeline/code_deps.py)."""
