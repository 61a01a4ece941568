"""Copy head: a pointer-generator output layer (See et al., 2017, "Get To The Point").

    p(v | t) = g_t * softmax(lm_logits_t)(v) + (1 - g_t) * sum_{s <= t, x_s = v} a_ts

a_ts is one attention distribution over the tokens seen so far (queries and keys are projections of the final
hidden states), g_t = sigmoid(gate(h_t)). Why: answering from retrieved documents means emitting tokens that are
already in the context. Without this head a model has to grow a multi-layer copying circuit (previous-token head
+ induction head) from an answer signal of ~10 tokens per example, which a small model trained for minutes on
a CPU did not do (bench/rag_learnability.py). With it, copying is one attention pattern whose gradient points
straight at the positions holding the target token.

Off by default (GPTConfig.copy_head); a model with it returns log-probabilities of the mixture as its logits, so
sampling, temperature and top-k work unchanged.
"""
import math

import torch
import torch.nn as nn


class CopyHead(nn.Module):
    def __init__(self, n_embd):
        super().__init__()
        self.q = nn.Linear(n_embd, n_embd, bias=False)
        self.k = nn.Linear(n_embd, n_embd, bias=False)
        self.gate = nn.Linear(n_embd, 1, bias=True)

    @torch.no_grad()
    def init_weights(self):
        std = 1.0 / math.sqrt(self.q.in_features)
        nn.init.normal_(self.q.weight, std=std)
        nn.init.normal_(self.k.weight, std=std)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)  # starts at g = 0.5: half vocabulary, half copy

    def pointer(self, h, keys, positions):
        """Attention (B, Tq, Tk) of queries h (B, Tq, C) at absolute `positions` (Tq,) over keys (B, Tk, C)."""
        scores = (self.q(h) @ keys.transpose(1, 2)).float() / math.sqrt(h.size(-1))
        causal = torch.arange(keys.size(1), device=h.device)[None, :] <= positions[:, None]  # (Tq, Tk)
        return scores.masked_fill(~causal, float("-inf")).softmax(-1)

    def log_probs(self, logits, h, ids, keys, positions):
        """log p(v) for every v: (B, Tq, V), from lm logits (B, Tq, V) and the context ids/keys (B, Tk)."""
        a = self.pointer(h, keys, positions)  # (B, Tq, Tk)
        copy = torch.zeros_like(logits).scatter_add_(2, ids[:, None, :].expand(-1, h.size(1), -1), a)
        g = torch.sigmoid(self.gate(h).float())  # (B, Tq, 1)
        return torch.log((g * logits.softmax(-1) + (1 - g) * copy).clamp_min(1e-30))

    def nll(self, logits, h, ids, keep, targets, reduction="mean"):
        """-log p(target) at the positions `keep` (B, T) marks; logits (N, V) are the lm_head's at those rows."""
        b, t = keep.nonzero(as_tuple=True)  # (N,), (N,)
        a = self.pointer(h, self.k(h), torch.arange(h.size(1), device=h.device))[b, t]  # (N, T)
        p_copy = (a * (ids[b] == targets[:, None])).sum(-1)  # (N,)
        p_vocab = logits.softmax(-1).gather(1, targets[:, None]).squeeze(1)  # (N,)
        g = torch.sigmoid(self.gate(h[b, t]).float()).squeeze(1)  # (N,)
        nll = -torch.log(g * p_vocab + (1 - g) * p_copy + 1e-12)
        return {"mean": nll.mean, "sum": nll.sum}.get(reduction, lambda: nll)()
