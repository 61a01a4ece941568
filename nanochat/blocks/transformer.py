"""Transformer block: causal self-attention (RoPE, QK-norm, GQA) + ReLU^2 MLP, pre-norm residuals.

Follows nanochat's gpt.py. With an inference cache, keys/values of past positions come from
the cache (`cache.insert_kv`), so decoding one token costs O(T) instead of O(T^2).
"""
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


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        C, D = config.n_embd, self.head_dim
        self.c_q = nn.Linear(C, self.n_head * D, bias=False)
        self.c_k = nn.Linear(C, self.n_kv_head * D, bias=False)
        self.c_v = nn.Linear(C, self.n_kv_head * D, bias=False)
        self.c_proj = nn.Linear(C, C, bias=False)

    def forward(self, x, cos_sin, cache=None):
        B, T, C = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)     # (B, T, H, D)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)  # (B, T, Hkv, D)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)  # (B, T, Hkv, D)
        cos, sin = cos_sin
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        q, k = norm(q), norm(k)  # QK-norm keeps attention logits bounded
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        if cache is not None:
            k, v = cache.insert_kv(self.layer_idx, k, v)  # (B, Hkv, Tk, D): past + these T
        Tq, Tk = q.size(2), k.size(2)
        gqa = self.n_head != self.n_kv_head
        mask = None if cache is None else cache.attention_mask(Tq, Tk)  # (B, 1, Tq, Tk) in a left-padded batch
        if mask is not None:
            # causal, over each row's real tokens only (a padding query sees itself, so no row is all -inf)
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


class TransformerBlock(Block):
    kind = "T"

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config.n_embd)
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head

    def forward(self, x, cos_sin, cache=None):
        x = x + self.attn(norm(x), cos_sin, cache)
        x = x + self.mlp(norm(x))
        return x

    def init_weights(self):
        self.attn.init_weights()
        self.mlp.init_weights()

    def extra_flops_per_token(self, seq_len):
        # QK^T and AV: 2 matmuls x 2 FLOPs/MAC x 3 (fwd + bwd) over seq_len keys
        return 12 * self.n_head * self.head_dim * seq_len
