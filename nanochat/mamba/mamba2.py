"""Mamba-2 (SSD) mixer in pure PyTorch; mirrors mamba_ssm/modules/mamba2.py and its gated RMSNorm.

Same parameter names and shapes as mamba-ssm's `Mamba2` (and `RMSNormGated` as layernorm_gated.RMSNorm, one
`weight`), so one checkpoint loads into either; the scan is nanochat.mamba.ssd (chunked on CPU).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat.mamba.inference import _conv_step, _padding_snapshot, _restore_padding_rows, _states_from_cache
from nanochat.mamba.mamba1 import _inv_softplus_dt
from nanochat.mamba.ssd import CPU_SSD_CHUNK, ssd_chunked, ssd_ref


class RMSNormGated(nn.Module):
    """Gated group RMSNorm; mirrors mamba_ssm.ops.triton.layernorm_gated.RMSNorm (rms_norm_ref): a single `weight`."""

    def __init__(self, hidden_size, eps=1e-5, group_size=None, norm_before_gate=True, device=None, dtype=None):
        super().__init__()
        self.eps, self.group_size, self.norm_before_gate = eps, group_size, norm_before_gate
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.register_parameter("bias", None)

    def forward(self, x, z=None):
        """norm(x) * silu(z) if norm_before_gate else norm(x * silu(z)); x, z: (..., ED), computed in fp32."""
        dtype = x.dtype
        x = x.float()
        if z is not None and not self.norm_before_gate:
            x = x * F.silu(z.float())
        gs = self.group_size or x.shape[-1]
        xg = x.unflatten(-1, (-1, gs))  # (..., groups, gs)
        x = (xg * torch.rsqrt(xg.square().mean(-1, keepdim=True) + self.eps)).flatten(-2) * self.weight.float()
        if z is not None and self.norm_before_gate:
            x = x * F.silu(z.float())
        return x.to(dtype)


class Mamba2(nn.Module):
    """Mamba-2 (SSD) mixer; mirrors mamba_ssm.modules.mamba2.Mamba2 (names, shapes, init, methods).

    Tensor/sequence parallelism (process_group) and varlen (seq_idx, cu_seqlens) are not supported here.
    Always pass inference_params by keyword: mamba-ssm's Mamba2.forward has `seqlen` as its second argument.
    """

    def __init__(self, d_model, d_state=128, d_conv=4, conv_init=None, expand=2, headdim=64, d_ssm=None, ngroups=1,
                 A_init_range=(1, 16), D_has_hdim=False, rmsnorm=True, norm_before_gate=False, dt_min=0.001,
                 dt_max=0.1, dt_init_floor=1e-4, dt_limit=(0.0, float("inf")), bias=False, conv_bias=True,
                 chunk_size=256, use_mem_eff_path=True, layer_idx=None, process_group=None, sequence_parallel=True,
                 device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        if process_group is not None:
            raise NotImplementedError("the pure-PyTorch Mamba2 has no tensor parallelism; pass process_group=None")
        self.d_model, self.d_state, self.d_conv, self.conv_init, self.expand = d_model, d_state, d_conv, conv_init, expand
        self.d_inner = expand * d_model
        self.headdim = headdim
        self.d_ssm = self.d_inner if d_ssm is None else d_ssm
        self.ngroups = ngroups
        if self.d_ssm % headdim != 0:
            raise ValueError(f"Mamba2: d_ssm={self.d_ssm} (expand * d_model) must be a multiple of headdim={headdim}")
        self.nheads = self.d_ssm // headdim
        if self.nheads % ngroups != 0:
            raise ValueError(f"Mamba2: nheads={self.nheads} must be a multiple of ngroups={ngroups}")
        self.D_has_hdim, self.rmsnorm, self.norm_before_gate = D_has_hdim, rmsnorm, norm_before_gate
        self.dt_limit = dt_limit
        self.activation = "silu"
        self.chunk_size = chunk_size
        self.use_mem_eff_path = use_mem_eff_path  # accepted for signature parity
        self.layer_idx = layer_idx
        self.chunked = True  # False = sequential reference scan (tests, bench)

        # in_proj output order: [z0, x0 (gated MLP part, empty unless d_ssm < d_inner), z, xBC, dt]
        d_in_proj = 2 * self.d_inner + 2 * ngroups * d_state + self.nheads
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=bias, **factory_kwargs)
        conv_dim = self.d_ssm + 2 * ngroups * d_state
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, kernel_size=d_conv, groups=conv_dim, padding=d_conv - 1,
                                bias=conv_bias, **factory_kwargs)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        self.act = nn.SiLU()

        self.dt_bias = nn.Parameter(_inv_softplus_dt(self.nheads, dt_min, dt_max, dt_init_floor, factory_kwargs))
        self.dt_bias._no_weight_decay = True
        assert A_init_range[0] > 0 and A_init_range[1] >= A_init_range[0], f"bad A_init_range {A_init_range}"
        A = torch.empty(self.nheads, dtype=torch.float32, device=device).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A).to(dtype=dtype))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_ssm if D_has_hdim else self.nheads, device=device))
        self.D._no_weight_decay = True
        if rmsnorm:
            self.norm = RMSNormGated(self.d_ssm, eps=1e-5, norm_before_gate=norm_before_gate,
                                     group_size=self.d_ssm // ngroups, **factory_kwargs)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)

    def _split(self, zxbcdt):
        d_mlp = (zxbcdt.shape[-1] - 2 * self.d_ssm - 2 * self.ngroups * self.d_state - self.nheads) // 2
        sizes = [d_mlp, d_mlp, self.d_ssm, self.d_ssm + 2 * self.ngroups * self.d_state, self.nheads]
        return torch.split(zxbcdt, sizes, dim=-1)

    def _dt(self, dt):
        dt = F.softplus(dt.float() + self.dt_bias.float())  # (..., H)
        if self.dt_limit != (0.0, float("inf")):
            dt = dt.clamp(*self.dt_limit)
        return dt

    def _D(self):
        return self.D.float().view(self.nheads, self.headdim if self.D_has_hdim else 1)  # (H, P) or (H, 1)

    def _finish(self, y, z, z0, x0):
        """Gate/normalise y (..., d_ssm), prepend the optional gated-MLP part, project out."""
        y = self.norm(y, z) if self.rmsnorm else y * self.act(z)
        if z0.shape[-1] > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        return self.out_proj(y)

    supports_pad_mask = True  # forward/step take pad_mask (mamba-ssm's modules do not)

    def forward(self, hidden_states, inference_params=None, pad_mask=None):
        """hidden_states (B, L, D) -> (B, L, D). With inference_params: prefill stores states, offset > 0 steps.

        pad_mask (B, L) bool, False = padding: zeros into the conv and dt = 0 in the scan there (as Mamba.forward).
        """
        Bsz, L, _ = hidden_states.shape
        conv_state = ssm_state = None
        if inference_params is not None:
            conv_state, ssm_state = self._get_states_from_cache(inference_params, Bsz)
            if inference_params.seqlen_offset > 0:
                out, _, _ = self.step(hidden_states, conv_state, ssm_state,
                                      pad_mask=None if pad_mask is None else pad_mask[:, -1])  # states updated in place
                return out
        z0, x0, z, xBC, dt = self._split(self.in_proj(hidden_states))
        if pad_mask is not None:
            xBC = xBC * pad_mask.unsqueeze(-1).to(xBC.dtype)
        xBC = xBC.transpose(1, 2)  # (B, d_conv_in, L)
        if conv_state is not None:
            conv_state.copy_(F.pad(xBC, (self.d_conv - L, 0)))
        xBC = self.act(self.conv1d(xBC)[..., :L]).transpose(1, 2)  # (B, L, d_ssm + 2GN)
        GN = self.ngroups * self.d_state
        x, B, C = torch.split(xBC, [self.d_ssm, GN, GN], dim=-1)
        x = x.unflatten(-1, (self.nheads, self.headdim)).float()  # (B, L, H, P)
        B = B.unflatten(-1, (self.ngroups, self.d_state)).float()  # (B, L, G, N)
        C = C.unflatten(-1, (self.ngroups, self.d_state)).float()
        dt = self._dt(dt)  # (B, L, H)
        if pad_mask is not None:
            dt = dt * pad_mask.unsqueeze(-1)  # no decay, no input: the state passes padding unchanged (zero)
        A = -torch.exp(self.A_log.float())  # (H,)
        if self.chunked:
            y, last_state = ssd_chunked(x, dt, A, B, C, min(self.chunk_size, CPU_SSD_CHUNK))
        else:
            y, last_state = ssd_ref(x, dt, A, B, C)
        if ssm_state is not None:
            ssm_state.copy_(last_state)
        y = (y + x * self._D()).flatten(-2).to(hidden_states.dtype)  # (B, L, d_ssm)
        return self._finish(y, z, z0, x0)

    def step(self, hidden_states, conv_state, ssm_state, pad_mask=None):
        """One decoding step: hidden_states (B, 1, D) -> (out (B, 1, D), conv_state, ssm_state), states updated in place.

        pad_mask (B,) bool: rows where it is False are padding and keep their states unchanged.
        """
        dtype = hidden_states.dtype
        assert hidden_states.shape[1] == 1, f"step decodes one token at a time, got {hidden_states.shape[1]}"
        snapshot = _padding_snapshot(pad_mask, conv_state, ssm_state)
        z0, x0, z, xBC, dt = self._split(self.in_proj(hidden_states.squeeze(1)))
        xBC = self.act(_conv_step(conv_state, xBC, self.conv1d)).to(dtype)  # (B, d_ssm + 2GN)
        GN = self.ngroups * self.d_state
        x, B, C = torch.split(xBC, [self.d_ssm, GN, GN], dim=-1)
        rep = self.nheads // self.ngroups
        x = x.unflatten(-1, (self.nheads, self.headdim)).float()  # (B, H, P)
        B = B.unflatten(-1, (self.ngroups, self.d_state)).float().repeat_interleave(rep, dim=1)  # (B, H, N)
        C = C.unflatten(-1, (self.ngroups, self.d_state)).float().repeat_interleave(rep, dim=1)
        dt = self._dt(dt)  # (B, H)
        dA = torch.exp(dt * -torch.exp(self.A_log.float()))  # (B, H)
        dBx = (dt.unsqueeze(-1) * x).unsqueeze(-1) * B.unsqueeze(2)  # (B, H, P, N)
        ssm_state.copy_(ssm_state * dA[..., None, None] + dBx)
        y = torch.einsum("bhpn,bhn->bhp", ssm_state.float(), C) + x * self._D()  # (B, H, P)
        out = self._finish(y.flatten(-2).to(dtype), z, z0, x0)
        _restore_padding_rows(pad_mask, snapshot, conv_state, ssm_state)
        return out.unsqueeze(1), conv_state, ssm_state

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None, **kwargs):
        """Returns zeroed (conv_state (B, d_ssm + 2GN, W), ssm_state (B, H, P, N))."""
        device = self.out_proj.weight.device
        conv_dim = self.conv1d.weight.shape[0]
        # same memory layout as mamba-ssm: allocated (B, W, conv_dim) and viewed transposed
        conv_state = torch.zeros(batch_size, self.d_conv, conv_dim, device=device,
                                 dtype=dtype or self.conv1d.weight.dtype).transpose(1, 2)
        ssm_state = torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device,
                                dtype=dtype or self.in_proj.weight.dtype)
        return conv_state, ssm_state

    def _get_states_from_cache(self, inference_params, batch_size, initialize_states=False):
        return _states_from_cache(self, inference_params, batch_size, initialize_states)
