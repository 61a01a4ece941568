"""Mamba block: x + mixer(norm(x)), then x + mlp(norm(x)) (the MLP is optional: mamba_use_mlp=False,
as in the nanochat-turbo fork's blocks).

The mixer comes from `nanochat.mamba.create_mamba_mixer`, so its parameters are named
exactly as in mamba-ssm (`in_proj`, `conv1d`, ..., `out_proj`) under the `mixer.` prefix and a
checkpoint loads into either implementation. During generation the mixer reads and writes its
conv + SSM state in `cache.mamba_params` (a mamba-ssm style InferenceParams). In a left-padded batch
(`cache.pad_mask`) every row's state starts at its own first real token: our mixers mask padding themselves,
mamba-ssm's are prefilled row by row.
"""
import torch
import torch.nn as nn

from nanochat.blocks.base import MLP, Block, norm


def mixer_kwargs(config):
    kw = dict(d_state=config.mamba_d_state, d_conv=config.mamba_d_conv, expand=config.mamba_expand)
    if config.mamba_version == 2:
        kw["headdim"] = config.mamba_headdim
        if config.mamba_ngroups != 1:  # one B/C group per attention head after hybridize (nanochat.hybridize)
            kw["ngroups"] = config.mamba_ngroups
    return kw


class MambaBlock(Block):
    kind = "M"

    def __init__(self, config, layer_idx):
        super().__init__(config, layer_idx)
        from nanochat.mamba import create_mamba_mixer  # lazy: transformer-only models never need it
        self.n_embd = config.n_embd
        self.version = config.mamba_version
        self.kw = mixer_kwargs(config)
        self.mixer = create_mamba_mixer(config.n_embd, config.mamba_version, layer_idx, **self.kw)
        self.mlp = MLP(config.n_embd) if config.mamba_use_mlp else None
        self.d_inner = config.mamba_expand * config.n_embd
        self.d_state = config.mamba_d_state

    def forward(self, x, cos_sin=None, cache=None):
        params = None if cache is None else cache.mamba_params
        h = norm(x)  # (B, T, C)
        pad_mask = None if cache is None else cache.pad_mask(h.size(1))  # (B, T) False = left padding, or None
        if pad_mask is not None and not getattr(self.mixer, "supports_pad_mask", False):
            y = self._prefill_rows(h, params, pad_mask)
        elif params is not None and params.seqlen_offset > 0 and h.size(1) > 1:
            # a mixer steps one token at a time once its state exists (mamba-ssm's step asserts T == 1)
            masks = [{} if pad_mask is None else {"pad_mask": pad_mask[:, t:t + 1]} for t in range(h.size(1))]
            y = torch.cat([self.mixer(h[:, t:t + 1], inference_params=params, **masks[t])
                           for t in range(h.size(1))], dim=1)
        elif pad_mask is not None:
            y = self.mixer(h, inference_params=params, pad_mask=pad_mask)
        else:
            y = self.mixer(h, inference_params=params)  # (B, T, C)
        x = x + y
        if self.mlp is not None:
            x = x + self.mlp(norm(x))
        return x

    def _prefill_rows(self, h, params, pad_mask):
        """Left-padded prefill for mixers without pad_mask (mamba-ssm's): each row alone from its first real token,
        its states then written into the batch's. Outputs at padding positions are zero."""
        from nanochat.mamba import InferenceParams
        if params.seqlen_offset > 0:
            raise NotImplementedError("a padded batch must be prefilled in one call with mamba-ssm's mixers")
        idx = self.mixer.layer_idx
        states = params.key_value_memory_dict
        if idx not in states:
            states[idx] = self.mixer.allocate_inference_cache(h.size(0), params.max_seqlen)
        y = torch.zeros_like(h)
        for i, start in enumerate((~pad_mask).sum(1).tolist()):  # left padding: real tokens from `start` on
            one = InferenceParams(max_seqlen=params.max_seqlen, max_batch_size=1)
            y[i:i + 1, start:] = self.mixer(h[i:i + 1, start:], inference_params=one)
            for batch_state, row_state in zip(states[idx], one.key_value_memory_dict[idx]):
                batch_state[i].copy_(row_state[0])
        return y

    @torch.no_grad()
    def init_weights(self):
        # the mixer's own init (dt bias, A_log, D, conv) is part of Mamba's recipe: take it from a
        # freshly built mixer, which also repairs a model that was created on the meta device
        from nanochat.mamba import create_mamba_mixer
        fresh = create_mamba_mixer(self.n_embd, self.version, self.layer_idx, device="cpu", **self.kw)
        self.mixer.load_state_dict(fresh.state_dict())
        nn.init.zeros_(self.mixer.out_proj.weight)  # residual branch starts as identity, as c_proj does
        if self.mlp is not None:
            self.mlp.init_weights()

    def extra_flops_per_token(self, seq_len):
        # selective scan: ~6 FLOPs per (channel, state) element forward, x3 with backward (approximate)
        return 18 * self.d_inner * self.d_state
