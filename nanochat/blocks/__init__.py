"""Block types of the hybrid GPT, keyed by their block_pattern letter.

"T": attention + MLP (transformer.py); "M": Mamba mixer + MLP (mamba_block.py).
A new block type is one file with a `Block` subclass plus one entry here.
"""
from nanochat.blocks.base import MLP, Block, norm
from nanochat.blocks.mamba_block import MambaBlock
from nanochat.blocks.transformer import TransformerBlock

BLOCKS = {
    "T": TransformerBlock,
    "M": MambaBlock,
}


def build_block(letter, config, layer_idx):
    if letter not in BLOCKS:
        raise ValueError(f"unknown block type {letter!r} at layer {layer_idx}; known: {sorted(BLOCKS)}")
    return BLOCKS[letter](config, layer_idx)


__all__ = ["BLOCKS", "Block", "MLP", "MambaBlock", "TransformerBlock", "build_block", "norm"]
