"""Mamba-1 mixer in pure PyTorch; mirrors mamba_ssm/modules/mamba_simple.py (names, shapes, init, methods).

Same parameter names and shapes as mamba-ssm's `Mamba`, so one checkpoint loads into either; the scan is
nanochat.mamba.selective_scan (fp32, chunked on CPU).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat.mamba.inference import _conv_step, _padding_snapshot, _restore_padding_rows, _states_from_cache
from nanochat.mamba.selective_scan import selective_scan


def _inv_softplus_dt(n, dt_min, dt_max, dt_init_floor, factory_kwargs):
    """dt ~ log-uniform in [dt_min, dt_max]; returns the bias b with softplus(b) = dt (same init as mamba-ssm)."""
    dt = torch.exp(torch.rand(n, **factory_kwargs) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


class Mamba(nn.Module):
    """Mamba-1 selective SSM mixer; mirrors mamba_ssm.modules.mamba_simple.Mamba (names, shapes, init, methods)."""

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001, dt_max=0.1,
                 dt_init="random", dt_scale=1.0, dt_init_floor=1e-4, conv_bias=True, bias=False,
                 use_fast_path=True, layer_idx=None, device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        self.use_fast_path = use_fast_path  # accepted for signature parity; there is no fused kernel here
        self.layer_idx = layer_idx
        self.chunked = True  # False = sequential reference scan (tests, bench)

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias, **factory_kwargs)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory_kwargs)
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + d_state * 2, bias=False, **factory_kwargs)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory_kwargs)

        # dt projection init keeps the variance of dt at init; its bias puts softplus(bias) in [dt_min, dt_max]
        dt_init_std = self.dt_rank ** -0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        else:
            raise NotImplementedError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
        with torch.no_grad():
            self.dt_proj.bias.copy_(_inv_softplus_dt(self.d_inner, dt_min, dt_max, dt_init_floor, factory_kwargs))
        self.dt_proj.bias._no_reinit = True  # a model-wide init must not zero this bias

        # S4D-real init: A[d, n] = -(n + 1); A_log and D stay fp32 whatever the module dtype
        A = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(self.d_inner, 1)  # (ED, N)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)

    supports_pad_mask = True  # forward/step take pad_mask (mamba-ssm's modules do not)

    def forward(self, hidden_states, inference_params=None, pad_mask=None):
        """hidden_states (B, L, D) -> (B, L, D). With inference_params: prefill stores states, offset > 0 steps.

        pad_mask (B, L) bool, False = padding (batched generation): a padding position feeds zeros to the conv and
        dt = 0 to the scan, so each row's state starts from its own first real token. Outputs there are garbage.
        """
        Bsz, L, _ = hidden_states.shape
        conv_state = ssm_state = None
        if inference_params is not None:
            conv_state, ssm_state = self._get_states_from_cache(inference_params, Bsz)
            if inference_params.seqlen_offset > 0:
                out, _, _ = self.step(hidden_states, conv_state, ssm_state,
                                      pad_mask=None if pad_mask is None else pad_mask[:, -1])  # states updated in place
                return out
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (B, L, ED) each
        if pad_mask is not None:
            x = x * pad_mask.unsqueeze(-1).to(x.dtype)
        x = x.transpose(1, 2)  # (B, ED, L)
        if conv_state is not None:  # keep the last W inputs (zero-padded on the left when L < W)
            conv_state.copy_(F.pad(x, (self.d_conv - L, 0)))
        x = self.act(self.conv1d(x)[..., :L]).transpose(1, 2)  # (B, L, ED)
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt).float())  # (B, L, ED)
        if pad_mask is not None:
            dt = dt * pad_mask.unsqueeze(-1)  # no decay, no input: the state passes padding unchanged (zero)
        A = -torch.exp(self.A_log.float())  # (ED, N)
        y, last_state = selective_scan(x.float(), dt, A, B.float(), C.float(), self.D.float(), chunked=self.chunked)
        if ssm_state is not None:
            ssm_state.copy_(last_state)
        y = y.to(hidden_states.dtype) * self.act(z)  # (B, L, ED)
        return self.out_proj(y)

    def step(self, hidden_states, conv_state, ssm_state, pad_mask=None):
        """One decoding step: hidden_states (B, 1, D) -> (out (B, 1, D), conv_state, ssm_state), states updated in place.

        pad_mask (B,) bool: rows where it is False are padding and keep their states unchanged.
        """
        dtype = hidden_states.dtype
        assert hidden_states.shape[1] == 1, f"step decodes one token at a time, got {hidden_states.shape[1]}"
        snapshot = _padding_snapshot(pad_mask, conv_state, ssm_state)
        x, z = self.in_proj(hidden_states.squeeze(1)).chunk(2, dim=-1)  # (B, ED)
        x = self.act(_conv_step(conv_state, x, self.conv1d)).to(dtype)  # (B, ED)
        dt, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt).float())  # (B, ED)
        A = -torch.exp(self.A_log.float())  # (ED, N)
        dA = torch.exp(dt.unsqueeze(-1) * A)  # (B, ED, N)
        dBx = (dt * x).unsqueeze(-1) * B.float().unsqueeze(1)  # (B, ED, N)
        ssm_state.copy_(ssm_state * dA + dBx)
        y = torch.einsum("ben,bn->be", ssm_state.float(), C.float()) + self.D.float() * x
        y = y.to(dtype) * self.act(z)  # (B, ED)
        _restore_padding_rows(pad_mask, snapshot, conv_state, ssm_state)
        return self.out_proj(y).unsqueeze(1), conv_state, ssm_state

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        """Returns zeroed (conv_state (B, ED, W), ssm_state (B, ED, N))."""
        device = self.out_proj.weight.device
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device,
                                 dtype=dtype or self.conv1d.weight.dtype)
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=device,
                                dtype=dtype or self.dt_proj.weight.dtype)
        return conv_state, ssm_state

    def _get_states_from_cache(self, inference_params, batch_size, initialize_states=False):
        return _states_from_cache(self, inference_params, batch_size, initialize_states)
