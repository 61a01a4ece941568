"""Decoding state of the mixers: the InferenceParams cache, one conv step, and padding rows that leave no trace.

Generation keeps each layer's (conv_state, ssm_state) in `InferenceParams.key_value_memory_dict`, as mamba-ssm's
utils/generation.py does, so the inference engine drives mamba-ssm's modules and ours the same way. Both mixers'
`step` use the helpers here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class InferenceParams:
    """Same fields as mamba_ssm.utils.generation.InferenceParams (layers keep their states in key_value_memory_dict)."""
    max_seqlen: int
    max_batch_size: int
    seqlen_offset: int = 0
    batch_size_offset: int = 0
    key_value_memory_dict: dict = field(default_factory=dict)
    lengths_per_sample: torch.Tensor | None = None

    def reset(self, max_seqlen, max_batch_size):
        self.max_seqlen = max_seqlen
        self.max_batch_size = max_batch_size
        self.seqlen_offset = 0
        if self.lengths_per_sample is not None:
            self.lengths_per_sample.zero_()


def _states_from_cache(mixer, inference_params, batch_size, initialize_states=False):
    """The (conv_state, ssm_state) a mixer keeps in inference_params, allocated on first use (mamba-ssm's rule)."""
    assert mixer.layer_idx is not None, f"{type(mixer).__name__} needs layer_idx to keep its states in inference_params"
    cache = inference_params.key_value_memory_dict
    if mixer.layer_idx not in cache:
        cache[mixer.layer_idx] = mixer.allocate_inference_cache(batch_size, inference_params.max_seqlen)
    conv_state, ssm_state = cache[mixer.layer_idx]
    if initialize_states:
        conv_state.zero_()
        ssm_state.zero_()
    return conv_state, ssm_state


def _conv_step(conv_state, x_t, conv):
    """One causal depthwise-conv step; conv_state (B, ED, W) is shifted in place. Returns (B, ED) before activation."""
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x_t
    out = torch.sum(conv_state * conv.weight[:, 0, :], dim=-1)  # (B, ED)
    return out + conv.bias if conv.bias is not None else out


def _padding_snapshot(pad_mask, *states):
    """Copies of the states before a step whose pad_mask (B,) marks some rows as padding, else None."""
    if pad_mask is None or bool(pad_mask.all()):
        return None
    return [s.clone() for s in states]


def _restore_padding_rows(pad_mask, snapshot, *states):
    """Put the padding rows' states back as they were: a padding token leaves no trace in conv or SSM state."""
    if snapshot is None:
        return
    for s, old in zip(states, snapshot):
        s.copy_(torch.where(pad_mask.view(-1, *[1] * (s.dim() - 1)), s, old))
