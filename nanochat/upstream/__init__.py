"""Upstream nanochat interoperability: its checkpoints of each era (eras.py), its tokenizer.pkl (tokenizer_pkl.py,
bpe.py), and export back to its layout (export.py)."""
from nanochat.upstream.eras import ERAS, UnknownConfigField, config_from_meta, detect_era, is_upstream
from nanochat.upstream.tokenizer_pkl import EncodingState, RefusedPickle, read_encoding, write_encoding

__all__ = ["ERAS", "EncodingState", "RefusedPickle", "UnknownConfigField", "config_from_meta", "detect_era",
           "is_upstream", "read_encoding", "write_encoding"]
