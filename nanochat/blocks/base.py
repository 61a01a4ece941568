"""The block interface shared by every layer type of the hybrid GPT.

A block is one residual layer: it maps (B, T, C) -> (B, T, C) and may read/write an
inference cache during generation. Adding a new block type is one file: subclass
`Block`, set `kind` to its block_pattern letter, and list it in `nanochat.blocks.BLOCKS`.

Shape letters: B batch, T time (this call), C channels (n_embd), H heads, D head dim.
"""
import torch.nn as nn
import torch.nn.functional as F


def norm(x):
    # functional RMSNorm without learnable params, as nanochat does
    return F.rms_norm(x, (x.size(-1),))


class MLP(nn.Module):
    """Feed-forward with ReLU^2 (nanochat): cheap, and no worse than GELU at this scale."""

    def __init__(self, n_embd):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=False)

    def forward(self, x):
        x = self.c_fc(x)          # (B, T, 4C)
        x = F.relu(x).square()
        return self.c_proj(x)     # (B, T, C)

    def init_weights(self):
        # uniform with the std of N(0, 1/C); the output projection starts at zero so each
        # residual branch begins as the identity (nanochat's init)
        bound = 3 ** 0.5 * self.c_fc.in_features ** -0.5
        nn.init.uniform_(self.c_fc.weight, -bound, bound)
        nn.init.zeros_(self.c_proj.weight)


class Block(nn.Module):
    """Base class: one residual layer of the GPT at position `layer_idx`."""

    kind = "?"  # the block_pattern letter of this block type

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, x, cos_sin, cache=None):
        """x: (B, T, C); cos_sin: rotary tables for these T positions; cache: an engine InferenceCache or None."""
        raise NotImplementedError

    def init_weights(self):
        raise NotImplementedError

    def extra_flops_per_token(self, seq_len):
        """FLOPs per token that 6 * num_params does not count (attention scores, SSM scan)."""
        return 0
