"""Transformer block: causal self-attention (RoPE, QK-norm, GQA) + ReLU^2 MLP, pre-norm residuals.

Follows nanochat's gpt.py. With an inference cache, keys/values of past positions come from
the cache (`cache.insert_kv`), so decoding one token costs O(T) instead of O(T^2).

Options that upstream nanochat added by Jul 2026 (off by default, see GPTConfig): sliding-window
attention per layer (`window_pattern`), q/k scaled after QK-norm (`qk_scale`), and value embeddings
mixed into v through a per-head gate (`value_embeds`, ResFormer-style, on alternate layers).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat.blocks.base import MLP, Block, norm


def apply_rotary_emb(x, cos, sin):
    """Rotate channel pairs (i, i + D/2) by position-dependent angles. x: (B, T, H, D); cos/sin: (1, T, 1, D/2)."""
    assert x.ndim == 4, f"expected (B, T, H, D), got {tuple(x.shape)}"
    d = x.shape[3] // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    y1 = x1 * cos + x2 * sin
    y2 = x2 * cos - x1 * sin
    return torch.cat([y1, y2], dim=3)


VE_GATE_CHANNELS = 12  # the value-embedding gate reads this many leading channels of the block input


def has_value_embed(layer_idx, n_layer):
    """Value embeddings sit on every other layer, counted back from the last (which always has one)."""
    return layer_idx % 2 == (n_layer - 1) % 2


def layer_window(config, layer_idx):
    """Keys a query may look back at in this layer (-1 = all). window_pattern letters are tiled over the layers:
    L = sequence_len, S = a quarter of it rounded up to a multiple of 128; the last layer is always L."""
    if not config.window_pattern:
        return -1
    pattern = config.window_pattern.upper()
    letter = "L" if layer_idx == config.n_layer - 1 else pattern[layer_idx % len(pattern)]
    return config.sequence_len if letter == "L" else math.ceil(config.sequence_len / 512) * 128


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        self.qk_scale = config.qk_scale
        self.window = layer_window(config, layer_idx)
        C, D = config.n_embd, self.head_dim
        self.c_q = nn.Linear(C, self.n_head * D, bias=False)
        self.c_k = nn.Linear(C, self.n_kv_head * D, bias=False)
        self.c_v = nn.Linear(C, self.n_kv_head * D, bias=False)
        self.c_proj = nn.Linear(C, C, bias=False)
        with_ve = config.value_embeds and has_value_embed(layer_idx, config.n_layer)
        self.ve_gate = nn.Linear(VE_GATE_CHANNELS, self.n_kv_head, bias=False) if with_ve else None

    def forward(self, x, cos_sin, cache=None, ve=None):
        """x: (B, T, C) normalised block input; ve: this layer's value embeddings of the tokens (B, T, Hkv*D) or None."""
        B, T, C = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)     # (B, T, H, D)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)  # (B, T, Hkv, D)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)  # (B, T, Hkv, D)
        if ve is not None:  # value residual: a token-indexed vector added to v, gated per kv head in (0, 3)
            gate = 3 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))  # (B, T, Hkv)
            v = v + gate.unsqueeze(-1) * ve.view(B, T, self.n_kv_head, self.head_dim).to(v.dtype)
        cos, sin = cos_sin
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        q, k = norm(q), norm(k)  # QK-norm keeps attention logits bounded
        if self.qk_scale != 1.0:  # sharper attention than QK-norm alone gives
            q, k = q * self.qk_scale, k * self.qk_scale
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        if cache is not None:
            k, v = cache.insert_kv(self.layer_idx, k, v)  # (B, Hkv, Tk, D): past + these T
        Tq, Tk = q.size(2), k.size(2)
        gqa = self.n_head != self.n_kv_head
        mask = None if cache is None else cache.attention_mask(Tq, Tk)  # (B, 1, Tq, Tk) in a left-padded batch
        if 0 <= self.window < Tk - 1:
            # sliding window: query i sees keys i - window .. i (column distance = position distance in a row)
            rows = torch.arange(Tk - Tq, Tk, device=q.device)[:, None]
            cols = torch.arange(Tk, device=q.device)[None, :]
            window = (cols <= rows) & (rows - cols <= self.window)
            mask = window if mask is None else mask & window
        if mask is not None:
            # causal over each row's real tokens (a padding query sees itself, so no row is all -inf), windowed
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        elif Tq == Tk:
            # training or prefill from an empty cache: plain causal attention
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        elif Tq == 1:
            # one new token attends to everything cached
            y = F.scaled_dot_product_attention(q, k, v, is_causal=False, enable_gqa=gqa)
        else:
            # a chunk after a cached prefix: the whole prefix, then causal inside the chunk
            prefix = Tk - Tq
            mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=prefix)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.c_proj(y)

    def init_weights(self):
        bound = 3 ** 0.5 * self.c_q.in_features ** -0.5
        for lin in (self.c_q, self.c_k, self.c_v):
            nn.init.uniform_(lin.weight, -bound, bound)
        nn.init.zeros_(self.c_proj.weight)
        if self.ve_gate is not None:
            nn.init.uniform_(self.ve_gate.weight, 0.0, 0.02)  # gates start just above the middle of (0, 3)


class TransformerBlock(Block):
    kind = "T"

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config.n_embd)
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head

    def forward(self, x, cos_sin, cache=None, ve=None):
        x = x + self.attn(norm(x), cos_sin, cache, ve)
        x = x + self.mlp(norm(x))
        return x

    def init_weights(self):
        self.attn.init_weights()
        self.mlp.init_weights()

    def extra_flops_per_token(self, seq_len):
        # QK^T and AV: 2 matmuls x 2 FLOPs/MAC x 3 (fwd + bwd) over seq_len keys (fewer with a sliding window)
        keys = seq_len if self.attn.window < 0 else min(seq_len, self.attn.window + 1)
        return 12 * self.n_head * self.head_dim * keys
