"""Hybrid GPT: nanochat's transformer with some layers swapped for Mamba blocks.

`block_pattern` has one letter per layer: "T" = attention + MLP, "M" = Mamba mixer + MLP.
Everything else follows nanochat: token embedding, rotary positions (no learned positions),
QK-norm, parameter-free RMSNorm, ReLU^2 MLP, untied lm_head, tanh logit softcap, no biases.

Upstream nanochat's later features are config options, off by default, so its checkpoints of every
known era compute exactly what upstream computes (nanochat.upstream maps an era's config onto them):
rotary base and bf16-rounded rotary tables, q/k scale, sliding windows, value embeddings, smear
(the previous token's embedding mixed in), backout (a mid-layer residual subtracted at the end),
per-layer residual/x0 lambdas, and a vocabulary padded to a multiple of `pad_vocab_size_to`.

Shape letters: B batch, T time, C n_embd, V vocab, H heads, D head dim.
"""
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat.blocks import BLOCKS, build_block, norm
from nanochat.blocks.transformer import has_value_embed
from nanochat.copy_head import CopyHead

SOFTCAP = 15  # logits = SOFTCAP * tanh(logits / SOFTCAP), as nanochat
SMEAR_CHANNELS = 24  # the smear gate reads this many leading channels of the embedding
SMEAR_CACHE_KEY = "smear"  # InferenceCache.kv entry holding the last token's embedding (replicated like the rest)


@dataclass
class GPTConfig:
    sequence_len: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 6                 # query heads
    n_kv_head: int | None = None    # key/value heads (GQA); None = n_head
    n_embd: int = 768
    block_pattern: list | str | None = None  # "T,T,M,M", "TTMM" or ["T", "M"]; None = all "T"
    mamba_version: int | None = None         # 1 or 2; None = nanochat.mamba.DEFAULT_MAMBA_VERSION
    mamba_d_state: int = 16
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    mamba_headdim: int = 64                  # Mamba2 only
    mamba_ngroups: int = 1                   # Mamba2 only: B/C groups (hybridize: one per attention head)
    mamba_use_mlp: bool = True               # False: Mamba blocks without an MLP (nanochat-turbo)
    copy_head: bool = False                  # pointer-generator output (nanochat.copy_head): copy from context
    # upstream nanochat's features, by era (nanochat.upstream.ERAS); the defaults are this project's model
    rotary_base: float = 10000.0
    rotary_bf16: bool = False                # round the rotary tables to bf16 values (upstream until 2026)
    qk_scale: float = 1.0                    # q and k multiplied by this after QK-norm
    window_pattern: str | None = None        # sliding windows, e.g. "SSSL" (blocks.transformer.layer_window)
    value_embeds: bool = False               # ResFormer value embeddings on alternate attention layers
    smear: bool = False                      # mix the previous token's embedding into each position
    backout: bool = False                    # subtract a learnt share of the mid-layer residual before the head
    layer_lambdas: bool = False              # per-layer scales of the residual stream and of the embedding x0
    pad_vocab_size_to: int = 1               # embedding/lm_head rows padded to a multiple of this

    def __post_init__(self):
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        self.block_pattern = parse_block_pattern(self.block_pattern, self.n_layer)
        if self.mamba_version is None:
            from nanochat.mamba import DEFAULT_MAMBA_VERSION
            self.mamba_version = DEFAULT_MAMBA_VERSION
        self.validate()

    def validate(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if (self.n_embd // self.n_head) % 2 != 0:
            raise ValueError(f"head dim n_embd/n_head={self.n_embd // self.n_head} must be even for rotary embeddings")
        if self.n_kv_head < 1 or self.n_head % self.n_kv_head != 0:
            raise ValueError(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head} (GQA)")
        if self.window_pattern is not None and (not self.window_pattern
                                                or set(self.window_pattern.upper()) - set("SL")):
            raise ValueError(f"window_pattern={self.window_pattern!r}: use the letters S (short) and L (long)")
        if self.pad_vocab_size_to < 1:
            raise ValueError(f"pad_vocab_size_to must be >= 1, got {self.pad_vocab_size_to}")
        if self.smear and self.n_embd < SMEAR_CHANNELS:
            raise ValueError(f"smear reads {SMEAR_CHANNELS} channels but n_embd={self.n_embd}")
        if self.mamba_version not in (1, 2):
            raise ValueError(f"mamba_version must be 1 or 2, got {self.mamba_version!r}")
        if self.mamba_version == 2 and "M" in self.block_pattern:
            d_inner = self.mamba_expand * self.n_embd
            if d_inner % self.mamba_headdim != 0:
                raise ValueError(f"Mamba2 needs mamba_expand*n_embd={d_inner} divisible by mamba_headdim="
                                 f"{self.mamba_headdim}; choose e.g. --mamba_headdim {math.gcd(d_inner, 64)}")

    @property
    def padded_vocab_size(self):
        return -(-self.vocab_size // self.pad_vocab_size_to) * self.pad_vocab_size_to


def parse_block_pattern(pattern, n_layer):
    """Normalise "T,T,M", "TTM", ["T", "M"] or None to a list of n_layer known letters."""
    if pattern is None:
        return ["T"] * n_layer
    if isinstance(pattern, str):
        letters = [p.strip().upper() for p in pattern.split(",")] if "," in pattern else list(pattern.strip().upper())
    elif isinstance(pattern, (list, tuple)):
        letters = [str(p).strip().upper() for p in pattern]
    else:
        raise TypeError(f"block_pattern must be a string or list of letters, got {type(pattern).__name__}")
    letters = [p for p in letters if p not in ("", " ")]
    unknown = sorted({p for p in letters if p not in BLOCKS})
    if unknown:
        raise ValueError(f"block_pattern {pattern!r} has unknown block type(s) {unknown}; known: {sorted(BLOCKS)} "
                         f"('T' = transformer, 'M' = Mamba)")
    if len(letters) != n_layer:
        raise ValueError(f"block_pattern {pattern!r} has {len(letters)} layers but n_layer={n_layer}; "
                         f"give one letter per layer")
    return letters


def value_embed_layers(config):
    """Layers with a value embedding: every other attention layer counted back from the last layer."""
    return [i for i, kind in enumerate(config.block_pattern)
            if kind == "T" and has_value_embed(i, config.n_layer)]


def suggest_hybrid_pattern(n_layer):
    """The guide's recommended shape: early transformer layers (~40%), late Mamba layers."""
    n_t = round(0.4 * n_layer) if n_layer > 1 else 0
    return ",".join(["T"] * n_t + ["M"] * (n_layer - n_t))


def require_mamba(config):
    """RAG/REFRAG fine-tuning needs at least one Mamba block (the guide's model requirement)."""
    if "M" not in config.block_pattern:
        raise ValueError(
            f"RAG requires Mamba or hybrid models (block_pattern must contain \"M\"), but this model is pure "
            f"transformer: block_pattern={','.join(config.block_pattern)}. Use a model with Mamba blocks:\n"
            f"--block_pattern \"{suggest_hybrid_pattern(config.n_layer)}\"\n"
            f"or turn this one into a hybrid by distillation (attention layers -> Mamba, upstream nanochat models too):\n"
            f"python -m scripts.hybridize --source base --model_tag TAG --knowledge_base KB "
            f"--block_pattern {suggest_hybrid_pattern(config.n_layer)}"
        )


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        V, C, L = config.padded_vocab_size, config.n_embd, config.n_layer
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(V, C),
            h=nn.ModuleList([build_block(kind, config, i) for i, kind in enumerate(config.block_pattern)]),
        ))
        self.lm_head = nn.Linear(C, V, bias=False)
        self.copy_head = CopyHead(C) if config.copy_head else None
        if config.layer_lambdas:
            self.resid_lambdas = nn.Parameter(torch.ones(L))  # x <- resid[i] * x + x0[i] * x0 before block i
            self.x0_lambdas = nn.Parameter(torch.zeros(L))
        if config.smear:
            self.smear_gate = nn.Linear(SMEAR_CHANNELS, 1, bias=False)
            self.smear_lambda = nn.Parameter(torch.zeros(1))
        if config.backout:
            self.backout_lambda = nn.Parameter(torch.zeros(1))
        if config.value_embeds:
            kv_dim = config.n_kv_head * (C // config.n_head)
            self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(V, kv_dim) for i in value_embed_layers(config)})
        # rotary tables for 10x the training length (cheap), so generation may run past sequence_len
        self.rotary_seq_len = config.sequence_len * 10
        cos, sin = self._precompute_rotary(self.rotary_seq_len, C // config.n_head, config)
        self.register_buffer("cos", cos, persistent=False)  # (1, Tmax, 1, D/2)
        self.register_buffer("sin", sin, persistent=False)

    @staticmethod
    def _precompute_rotary(seq_len, head_dim, config, device=None):
        base = config.rotary_base
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
        t = torch.arange(seq_len, dtype=torch.float32, device=device)
        freqs = torch.outer(t, inv_freq)  # (Tmax, D/2)
        cos, sin = freqs.cos(), freqs.sin()
        if config.rotary_bf16:  # kept in fp32 storage, with the values bf16 tables hold
            cos, sin = cos.bfloat16().float(), sin.bfloat16().float()
        return cos[None, :, None, :], sin[None, :, None, :]

    @torch.no_grad()
    def init_weights(self):
        """nanochat's init: unit-std embedding, tiny lm_head, blocks init themselves (zeroed output projections).
        Upstream's extra scalars start neutral (lambdas 1/0, smear and backout off)."""
        nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=1.0)
        nn.init.normal_(self.lm_head.weight, mean=0.0, std=0.001)
        for block in self.transformer.h:
            block.init_weights()
        if self.copy_head is not None:
            self.copy_head.init_weights()
        if self.config.layer_lambdas:
            nn.init.ones_(self.resid_lambdas)
            nn.init.zeros_(self.x0_lambdas)
        if self.config.smear:
            nn.init.uniform_(self.smear_gate.weight, 0.0, 0.02)
            nn.init.zeros_(self.smear_lambda)
        if self.config.backout:
            nn.init.zeros_(self.backout_lambda)
        if self.config.value_embeds:
            bound = 3 ** 0.5 * self.config.n_embd ** -0.5  # as c_v
            for emb in self.value_embeds.values():
                nn.init.uniform_(emb.weight, -bound, bound)
        # buffers are not saved in checkpoints: recompute them (a model built on "meta" has none)
        cos, sin = self._precompute_rotary(self.rotary_seq_len, self.config.n_embd // self.config.n_head, self.config,
                                           device=self.lm_head.weight.device)
        self.cos, self.sin = cos, sin

    @torch.no_grad()
    def grow_vocab(self, new_vocab_size, seed=0):
        """Rows for token ids vocab_size..new_vocab_size-1 (special tokens added to a trained tokenizer).

        Each new row of wte, lm_head and the value embeddings starts at the mean of the trained rows plus noise of a
        tenth of their per-channel std: the new tokens look like an average token (their logits start near the
        average logit, so the trained distribution barely moves) yet are told apart. Padding rows are reused
        when there are enough. The copy head has no per-token rows. Returns what was done, for the meta."""
        old, new = self.config.vocab_size, new_vocab_size
        if new <= old:
            raise ValueError(f"grow_vocab: new_vocab_size={new} must exceed vocab_size={old}")
        self.config = dataclasses.replace(self.config, vocab_size=new)
        rows = self.config.padded_vocab_size
        gen = torch.Generator().manual_seed(seed)

        def grown(weight):
            w = weight.detach()
            if w.size(0) < rows:
                w = torch.cat([w, w.new_zeros(rows - w.size(0), w.size(1))])
            trained = w[:old].float()
            noise = torch.randn(new - old, w.size(1), generator=gen).to(w.device)
            w[old:new] = (trained.mean(0) + 0.1 * trained.std(0) * noise).to(w.dtype)
            return nn.Parameter(w, requires_grad=weight.requires_grad)

        embeddings = [self.transformer.wte] + (list(self.value_embeds.values()) if self.config.value_embeds else [])
        for emb in embeddings:
            emb.weight = grown(emb.weight)
            emb.num_embeddings = rows
        self.lm_head.weight = grown(self.lm_head.weight)
        self.lm_head.out_features = rows
        return {"from": old, "to": new, "rows": rows, "init": "mean of trained rows + 0.1 std noise", "seed": seed}

    @property
    def has_mamba(self):
        return "M" in self.config.block_pattern

    def get_device(self):
        return self.transformer.wte.weight.device

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def estimate_flops(self):
        """Training FLOPs per token (fwd + bwd): 6 per non-embedding weight, plus attention/scan terms."""
        nparams_embedding = self.transformer.wte.weight.numel()  # lookups, not matmuls
        if self.config.value_embeds:
            nparams_embedding += sum(p.numel() for p in self.value_embeds.parameters())
        extra = sum(block.extra_flops_per_token(self.config.sequence_len) for block in self.transformer.h)
        return 6 * (self.num_params() - nparams_embedding) + extra

    def setup_optimizer(self, lr, weight_decay=0.0, betas=(0.9, 0.95)):
        """AdamW with weight decay on matrices only; embeddings, lm_head and Mamba's
        A_log / D / biases / conv (1-D or flagged `_no_weight_decay`) are never decayed."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            skip = (p.dim() < 2 or getattr(p, "_no_weight_decay", False) or name.startswith("transformer.wte")
                    or name.startswith(("lm_head", "value_embeds")) or "conv1d" in name)
            (no_decay if skip else decay).append(p)
        groups = [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]
        groups = [g for g in groups if g["params"]]
        fused = self.get_device().type == "cuda"
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8, fused=fused)
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]  # for LR schedules that scale from the start value
        return optimizer

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean", last_only=False):
        """idx: (B, T) token ids. Returns logits (B, T, V) or, with targets (B, T; -1 = ignore), the loss.

        last_only: logits of the last position only, (B, 1, V) (a prefill needs no more).
        """
        T0 = 0 if kv_cache is None else kv_cache.get_pos()
        x = self.trunk(idx, kv_cache)
        if self.copy_head is not None:
            return self._copy_output(x, idx, targets, kv_cache, T0, loss_reduction, last_only)
        logits = self.head_logits(x[:, -1:] if last_only else x)  # (B, T, V)
        if targets is None:
            return logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1,
                               reduction=loss_reduction)

    def trunk(self, idx, kv_cache=None):
        """(B, T) ids -> (B, T, C) final normed hidden states: everything before the head (advances kv_cache)."""
        B, T = idx.size()
        T0 = 0 if kv_cache is None else kv_cache.get_pos()
        if T0 + T > self.rotary_seq_len:
            raise ValueError(f"sequence of {T0 + T} tokens exceeds the rotary table ({self.rotary_seq_len} = "
                             f"10 x sequence_len={self.config.sequence_len}); use shorter inputs")
        rows = None if kv_cache is None else kv_cache.row_positions(T)  # (B, T) in a left-padded batch
        if rows is None:
            cos_sin = self.cos[:, T0:T0 + T], self.sin[:, T0:T0 + T]  # (1, T, 1, D/2)
        else:
            cos_sin = self.cos[0, rows], self.sin[0, rows]  # (B, T, 1, D/2): each row counts from its first token
        x = norm(self.transformer.wte(idx))  # (B, T, C)
        if self.config.smear:
            x = self._smear(x, kv_cache)
        x0, x_mid, mid = x, None, self.config.n_layer // 2
        for i, block in enumerate(self.transformer.h):
            if self.config.layer_lambdas:
                x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            if self.config.value_embeds and str(i) in self.value_embeds:
                x = block(x, cos_sin, kv_cache, ve=self.value_embeds[str(i)](idx))
            else:
                x = block(x, cos_sin, kv_cache)
            if i == mid:
                x_mid = x
        if self.config.backout:  # take out part of the mid-layer residual (low-level features) before the head
            x = x - self.backout_lambda * x_mid
        x = norm(x)
        if kv_cache is not None:
            kv_cache.advance(T)
        return x

    def head_logits(self, h):
        """Hidden states (..., C) -> softcapped fp32 logits (..., vocab_size), padding rows dropped."""
        logits = self._head(h).float()
        return SOFTCAP * torch.tanh(logits / SOFTCAP)

    def _head(self, x):
        """lm_head without its padding rows: (..., C) -> (..., vocab_size)."""
        logits = self.lm_head(x)
        V = self.config.vocab_size
        return logits if logits.size(-1) == V else logits[..., :V]

    def _smear(self, x, kv_cache):
        """x_t += smear_lambda * sigmoid(gate(x_t)) * x_{t-1}: a cheap bigram signal. During generation the previous
        call's last embedding comes from the cache, so position 0 of a new chunk is smeared like any other. In a
        left-padded batch a padding column is no one's previous token."""
        gate = lambda h: self.smear_lambda * torch.sigmoid(self.smear_gate(h[..., :SMEAR_CHANNELS]))  # (B, T, 1)
        prev, T = None, x.size(1)
        if kv_cache is not None:
            prev = kv_cache.kv.get(SMEAR_CACHE_KEY, (None,))[0]  # (B, 1, C) or None
            last = x[:, -1:].detach()
            kv_cache.kv[SMEAR_CACHE_KEY] = (last, last)  # a (k, v)-shaped entry, so replicate() copies it
        shifted = x[:, :-1]
        if kv_cache is not None and kv_cache.pads is not None:
            pos = kv_cache.get_pos()
            cols = torch.arange(pos - 1, pos + T - 1, device=x.device)  # each column's previous column
            real = (kv_cache.valid[:, cols.clamp_min(0)] & (cols >= 0)[None])[..., None].to(x.dtype)  # (B, T, 1)
            prev = None if prev is None else prev * real[:, :1]
            shifted = shifted * real[:, 1:]
        head = x[:, :1] if prev is None else x[:, :1] + gate(x[:, :1]) * prev.to(x.dtype)
        if T == 1:
            return head
        return torch.cat([head, x[:, 1:] + gate(x[:, 1:]) * shifted], dim=1)

    def _copy_output(self, x, idx, targets, kv_cache, T0, loss_reduction, last_only=False):
        """forward's output with the copy head: log-probabilities of the mixture, or its loss (same contract)."""
        softcap = lambda z: SOFTCAP * torch.tanh(z.float() / SOFTCAP)
        if targets is not None:
            keep = targets != -1  # (B, T)
            nll = self.copy_head.nll(softcap(self._head(x[keep])), x, idx, keep, targets[keep],
                                     "none" if loss_reduction == "none" else loss_reduction)
            if loss_reduction != "none":
                return nll
            return torch.zeros(keep.numel(), device=nll.device, dtype=nll.dtype).masked_scatter(keep.view(-1), nll)
        keys, ids, key_mask = self.copy_head.k(x), idx, None  # (B, T, C), (B, T)
        if kv_cache is not None:  # the context so far: earlier calls' keys and ids, then these (+ padding mask)
            keys, ids, key_mask = kv_cache.extend_copy_context(T0, keys, ids)
        T = idx.size(1)
        if last_only:
            x = x[:, -1:]
        positions = torch.arange(T0 + T - x.size(1), T0 + T, device=x.device)
        return self.copy_head.log_probs(softcap(self._head(x)), x, ids, keys, positions, key_mask)
