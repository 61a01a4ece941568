"""Mamba mixers that run everywhere with ONE set of weights.

On CUDA with `mamba_ssm` importable, `create_mamba_mixer` returns mamba-ssm's own `Mamba` / `Mamba2`
(fused kernels). Everywhere else it returns the pure-PyTorch mirrors below, which have exactly the
same parameter names and shapes (so one checkpoint loads either way), the same init, and the same
`forward(hidden_states, inference_params=None)` / `allocate_inference_cache` / `step` methods, so
the inference engine can drive either.

Mirrors (state-spaces/mamba): `Mamba` <- mamba_ssm/modules/mamba_simple.py, `Mamba2` <- mamba_ssm/modules/mamba2.py,
`RMSNormGated` <- mamba_ssm/ops/triton/layernorm_gated.py (rms_norm_ref), `ssd_chunked` <- ssd_minimal_discrete.

The CPU scans are chunked, not a Python loop over time:
- Mamba-1: h_t = a_t * h_{t-1} + b_t runs as a two-level scan (a loop of ~sqrt(L) steps inside chunks,
  vectorised over all chunks, then ~sqrt(L) carry steps between chunks); `selective_scan` wraps it in a custom
  autograd Function whose backward is the same scan run in reverse, so no per-timestep graph is built.
- Mamba-2: the SSD chunked formulation (intra-chunk quadratic form + inter-chunk state passing).
The plain sequential recurrences (`selective_scan_ref`, `ssd_ref`) are kept as the test reference.

CPU default: DEFAULT_MAMBA_VERSION = 2, picked with `python -m bench.mamba_block` (batch 8, d_model 256, fwd+bwd,
shared 2-core machine, tokens/s at seqlen 1024): Mamba-2 SSD 2.9K vs attention 6.2K (0.46x) with 2 threads, 6.8K vs
7.7K (0.88x) with 1 thread; Mamba-1 chunked 0.9K-1.0K (0.13-0.15x), because it must materialise a (B, L, ED, N)
state and is memory-bound (it beats the sequential reference ~3.7x with 2 threads, ties it with 1).

Shape glossary:
    B  batch size                    L  sequence length
    D  d_model                       ED d_inner = expand * d_model
    N  d_state                       R  dt_rank (Mamba-1); heads per B/C group, H // G (SSD)
    H  nheads = d_ssm // headdim     P  headdim (Mamba-2)
    G  ngroups (Mamba-2 B/C groups)  W  d_conv (conv kernel width)
    C  number of chunks              T  chunk length
"""
from __future__ import annotations

import importlib.util
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

logger = logging.getLogger(__name__)

# Cheap check only: importing mamba_ssm pulls in triton and CUDA extensions, so the real import is lazy.
HAS_MAMBA_SSM = importlib.util.find_spec("mamba_ssm") is not None
HAS_CAUSAL_CONV1D = importlib.util.find_spec("causal_conv1d") is not None
DEFAULT_MAMBA_VERSION = 2
# SSD block length on CPU. chunk_size only sets the blocking of mamba-ssm's kernel (the math is the same for any
# block length); on CPU 64 measured fastest for d_state 16..64 (the intra-chunk part grows with T, the rest with L/T).
CPU_SSD_CHUNK = 64

_IMPL = "auto"  # "auto" | "torch" | "cuda"; see set_mamba_impl
_WARNED = False
_TARGET_DEVICE = None  # see building_for


def set_mamba_impl(impl: str) -> None:
    """Override hook (tests): "auto" = mamba-ssm on CUDA when importable, "torch" = always ours, "cuda" = require mamba-ssm."""
    global _IMPL
    if impl not in ("auto", "torch", "cuda"):
        raise ValueError(f"mamba impl must be 'auto', 'torch' or 'cuda', got {impl!r}")
    _IMPL = impl


@contextmanager
def building_for(device):
    """Mixers created inside (with no device of their own, e.g. on "meta") are chosen for `device`.

    Models are often built on "meta" and moved later; without this a GPU host would pick mamba-ssm's kernels
    even for a model that is about to run on the CPU.
    """
    global _TARGET_DEVICE
    previous, _TARGET_DEVICE = _TARGET_DEVICE, torch.device(device)
    try:
        yield
    finally:
        _TARGET_DEVICE = previous


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


# -----------------------------------------------------------------------------
# Mamba-1 scan: h_t = a_t * h_{t-1} + b_t, chunked, with a hand-written backward

def _scan_forward(a, b, reverse=False):
    """Chunked linear recurrence along dim 1 (no autograd). a, b: (B, L, ...) -> h: (B, L, ...).

    Forward: h_t = a_t h_{t-1} + b_t. reverse=True: h_t = a_t h_{t+1} + b_t (used by the backward pass).
    """
    Bsz, L = a.shape[:2]
    rest = a.shape[2:]
    T = max(1, math.isqrt(L - 1) + 1)  # ~sqrt(L): T local steps + C carry steps
    C = -(-L // T)
    pad = C * T - L
    if pad:  # padding at the end (a=1, b=0) never touches the real outputs in either direction
        a = torch.cat([a, a.new_ones(Bsz, pad, *rest)], dim=1)
        b = torch.cat([b, b.new_zeros(Bsz, pad, *rest)], dim=1)
    a = a.reshape(Bsz, C, T, *rest)  # (B, C, T, ...)
    b = b.reshape(Bsz, C, T, *rest)
    steps = range(T - 1, -1, -1) if reverse else range(T)
    # 1) scan inside every chunk from a zero state, all chunks at once; P = decay from the chunk's entry to t
    h, P = torch.empty_like(b), torch.empty_like(a)
    prev = None
    for t in steps:
        if prev is None:
            h[:, :, t], P[:, :, t] = b[:, :, t], a[:, :, t]
        else:
            torch.addcmul(b[:, :, t], a[:, :, t], h[:, :, prev], out=h[:, :, t])
            torch.mul(a[:, :, t], P[:, :, prev], out=P[:, :, t])
        prev = t
    if C > 1:
        # 2) pass the state between chunks (decays are products of numbers in [0, 1]: no overflow)
        last = steps[-1]  # position where a chunk's scan ends
        order = range(C - 2, -1, -1) if reverse else range(1, C)
        carry = torch.zeros_like(h[:, 0, 0])
        carries = [carry]
        for c in order:
            src = c + 1 if reverse else c - 1
            carry = torch.addcmul(h[:, src, last], P[:, src, last], carry)
            carries.append(carry)
        if reverse:
            carries.reverse()
        h.addcmul_(P, torch.stack(carries, dim=1).unsqueeze(2))
    return h.reshape(Bsz, C * T, *rest)[:, :L]


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        h = _scan_forward(a, b)
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, gh):
        a, h = ctx.saved_tensors
        # g_t = gh_t + a_{t+1} g_{t+1}: the same recurrence run backwards in time
        a_next = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], dim=1)
        g = _scan_forward(a_next, gh.contiguous(), reverse=True)
        ga = torch.zeros_like(a)
        torch.mul(g[:, 1:], h[:, :-1], out=ga[:, 1:])  # h_{-1} = 0
        return ga, g


def linear_scan(a, b):
    """h_t = a_t * h_{t-1} + b_t with h_{-1} = 0, along dim 1. a, b: (B, L, ...) -> h: (B, L, ...)."""
    return _LinearScan.apply(a, b)


class _SelectiveScan(torch.autograd.Function):
    """Mamba-1 scan with a hand-written backward: the per-step tensors (B, L, ED, N) are the whole cost on CPU,
    so the backward recomputes exp(delta A) and reduces over N with matmuls instead of letting autograd keep and
    broadcast-reduce every intermediate."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        ctx.set_materialize_grads(False)
        dA = torch.exp(delta.unsqueeze(-1) * A)  # (B, L, ED, N), in (0, 1]
        dBu = (delta * u).unsqueeze(-1) * B.unsqueeze(2)  # (B, L, ED, N)
        h = _scan_forward(dA, dBu)  # (B, L, ED, N)
        y = torch.einsum("blen,bln->ble", h, C)  # (B, L, ED)
        ctx.save_for_backward(u, delta, A, B, C, h)
        return y, h[:, -1]

    @staticmethod
    def backward(ctx, gy, g_last):
        with torch.autocast(device_type=ctx.saved_tensors[0].device.type, enabled=False):
            return _SelectiveScan._backward(ctx, gy, g_last)

    @staticmethod
    def _backward(ctx, gy, g_last):
        u, delta, A, B, C, h = ctx.saved_tensors
        gy = _at_least_fp32(gy) if gy is not None else None
        g_last = _at_least_fp32(g_last) if g_last is not None else None
        gh = torch.zeros_like(h) if gy is None else gy.unsqueeze(-1) * C.unsqueeze(2)  # dL/dh_t, direct part
        if g_last is not None:
            gh[:, -1] += g_last
        a_next = torch.exp(delta[:, 1:].unsqueeze(-1) * A)  # (B, L-1, ED, N) = dA_{t+1}
        a_next = torch.cat([a_next, a_next.new_zeros(a_next.shape[0], 1, *a_next.shape[2:])], dim=1)
        g = _scan_forward(a_next, gh, reverse=True)  # (B, L, ED, N): dL/dh_t in full = dL/d(dBu_t)
        gC = torch.einsum("blen,ble->bln", h, gy) if gy is not None else torch.zeros_like(C)
        gBe = torch.einsum("blen,bln->ble", g, B)  # (B, L, ED)
        gB = torch.einsum("blen,ble->bln", g, delta * u)
        gu, gdelta = gBe * delta, gBe * u
        # through dA_t = exp(delta_t A): dL/d(delta_t A) = g_t * h_{t-1} * dA_t (zero at t = 0, where h_{-1} = 0)
        glog = g[:, 1:].mul_(h[:, :-1]).mul_(a_next[:, :-1])  # (B, L-1, ED, N), reuses g's storage
        gdelta[:, 1:] += (glog * A).sum(-1)  # plain mul + sum: an einsum here would copy glog to put ED first
        gA = (glog * delta[:, 1:].unsqueeze(-1)).sum((0, 1))
        return gu, gdelta, gA, gB, gC


def selective_scan(u, delta, A, B, C, D, chunked=True):
    """Mamba-1 selective scan (mirrors selective_scan_ref in mamba-ssm, but (B, L, ED) layout, fp32).

    u, delta: (B, L, ED) with delta already softplus'ed; A: (ED, N); B, C: (B, L, N); D: (ED,).
    Returns y (B, L, ED) and the last state (B, ED, N).
    """
    if not chunked:
        return selective_scan_ref(u, delta, A, B, C, D)
    # the scan runs in fp32 whatever autocast says (as mamba-ssm's kernel does): exp/cumulative products in bf16
    # lose the state, and mixed-dtype einsums in the hand-written backward would not type-check
    with torch.autocast(device_type=u.device.type, enabled=False):
        u, delta, A, B, C, D = (_at_least_fp32(t) for t in (u, delta, A, B, C, D))
        y, last_state = _SelectiveScan.apply(u.contiguous(), delta.contiguous(), A, B.contiguous(), C.contiguous())
        return y + u * D, last_state


def _at_least_fp32(t):
    """bf16/fp16 -> fp32; fp32 and fp64 (gradcheck) stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def selective_scan_ref(u, delta, A, B, C, D):
    """Sequential reference: one recurrence step per timestep (unbind over time). Same contract as selective_scan."""
    dA = torch.exp(delta.unsqueeze(-1) * A)  # (B, L, ED, N)
    dBu = (delta * u).unsqueeze(-1) * B.unsqueeze(2)  # (B, L, ED, N)
    h = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])  # (B, ED, N)
    ys = []
    for dA_t, dBu_t, C_t in zip(dA.unbind(1), dBu.unbind(1), C.unbind(1)):
        h = dA_t * h + dBu_t
        ys.append(torch.einsum("ben,bn->be", h, C_t))
    return torch.stack(ys, dim=1) + u * D, h


# -----------------------------------------------------------------------------
# Mamba-2 scan: SSD (state space duality), chunked

def segsum(x):
    """x: (..., T) -> (..., T, T) with out[i, j] = sum_{k=j+1..i} x_k for i >= j, -inf above the diagonal.

    Built by a masked cumsum (not differences of a cumsum) so no large numbers cancel, and the -inf mask is
    applied before any exp.
    """
    T = x.size(-1)
    xr = x.unsqueeze(-1).expand(*x.shape, T)  # (..., T, T): xr[i, j] = x_i
    strict = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(-1)
    out = torch.cumsum(xr.masked_fill(~strict, 0), dim=-2)
    lower = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(0)
    return out.masked_fill(~lower, -torch.inf)


def ssd_chunked(x, dt, A, B, C, chunk_size):
    """Mamba-2 SSD scan, chunked (mirrors ssd_minimal_discrete; handles L not a multiple of chunk_size).

    x: (B, L, H, P); dt: (B, L, H) softplus'ed; A: (H,) negative; B, C: (B, L, G, N).
    Returns y (B, L, H, P) without the D skip, and the final state (B, H, P, N).
    Works head-major (B, G, R, C, T, .) with H = G * R, so every product is a batched matmul on views and
    B / C are shared by the R heads of their group without copies.
    """
    Bsz, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    R = H // G
    T = min(chunk_size, L)
    nC = -(-L // T)
    pad = nC * T - L
    X = x * dt.unsqueeze(-1)  # (B, L, H, P)
    Ad = dt * A  # (B, L, H), log-decay per step, <= 0
    if pad:  # zero input and zero log-decay at the end: outputs and the final state are unchanged
        X, Ad, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (X, Ad, B, C))
    X = X.reshape(Bsz, nC, T, G, R, P).permute(0, 3, 4, 1, 2, 5).contiguous()  # (B, G, R, C, T, P)
    B = B.reshape(Bsz, nC, T, G, 1, N).permute(0, 3, 4, 1, 2, 5)  # (B, G, 1, C, T, N)
    C = C.reshape(Bsz, nC, T, G, 1, N).permute(0, 3, 4, 1, 2, 5)
    Ad = Ad.reshape(Bsz, nC, T, G, R).permute(0, 3, 4, 1, 2)  # (B, G, R, C, T)
    A_cs = torch.cumsum(Ad, dim=-1)  # (B, G, R, C, T)

    # 1) intra-chunk (diagonal blocks): causal "attention" C_l . B_s weighted by the decay from s to l
    M = (C @ B.transpose(-1, -2)) * torch.exp(segsum(Ad))  # (B, G, R, C, T, T)
    Y = M @ X  # (B, G, R, C, T, P)

    # 2) state at the end of each chunk from that chunk's inputs alone
    decay_to_end = torch.exp(A_cs[..., -1:] - A_cs)  # (B, G, R, C, T), <= 1
    states = (X * decay_to_end.unsqueeze(-1)).transpose(-1, -2) @ B  # (B, G, R, C, P, N)

    # 3) pass states between chunks: state entering chunk z = sum_{c<z} decay(c -> z) * states_c
    states = torch.cat([torch.zeros_like(states[:, :, :, :1]), states], dim=3)  # (B, G, R, C+1, P, N)
    decay_chunk = torch.exp(segsum(F.pad(A_cs[..., -1], (1, 0))))  # (B, G, R, C+1, C+1)
    states = (decay_chunk @ states.flatten(-2)).unflatten(-1, (P, N))  # (B, G, R, C+1, P, N)
    prev_states, final_state = states[:, :, :, :-1], states[:, :, :, -1]

    # 4) contribution of the incoming state to every position of the chunk
    Y = Y + (C @ prev_states.transpose(-1, -2)) * torch.exp(A_cs).unsqueeze(-1)  # (B, G, R, C, T, P)
    Y = Y.permute(0, 3, 4, 1, 2, 5).reshape(Bsz, nC * T, H, P)[:, :L]
    return Y, final_state.reshape(Bsz, H, P, N)


def ssd_ref(x, dt, A, B, C):
    """Sequential reference for ssd_chunked: h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t (unbind over time)."""
    H, G = x.shape[2], B.shape[2]
    Bh = B.repeat_interleave(H // G, dim=2)  # (B, L, H, N)
    Ch = C.repeat_interleave(H // G, dim=2)
    h = x.new_zeros(x.shape[0], H, x.shape[3], B.shape[3])  # (B, H, P, N)
    ys = []
    for x_t, dt_t, B_t, C_t in zip(x.unbind(1), dt.unbind(1), Bh.unbind(1), Ch.unbind(1)):
        dA = torch.exp(dt_t * A)[..., None, None]  # (B, H, 1, 1)
        h = h * dA + (dt_t[..., None] * x_t).unsqueeze(-1) * B_t.unsqueeze(2)
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C_t))
    return torch.stack(ys, dim=1), h


# -----------------------------------------------------------------------------
# Modules

def _inv_softplus_dt(n, dt_min, dt_max, dt_init_floor, factory_kwargs):
    """dt ~ log-uniform in [dt_min, dt_max]; returns the bias b with softplus(b) = dt (same init as mamba-ssm)."""
    dt = torch.exp(torch.rand(n, **factory_kwargs) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


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


# -----------------------------------------------------------------------------
# Factory: mamba-ssm's fused modules on CUDA when available, ours otherwise

def _load_mamba_ssm(version):
    """Import mamba-ssm's module class lazily (importing it pulls in triton/CUDA extensions)."""
    if version == 1:
        from mamba_ssm.modules.mamba_simple import Mamba as cls
    else:
        from mamba_ssm.modules.mamba2 import Mamba2 as cls
    return cls


def create_mamba_mixer(d_model, version, layer_idx, device=None, dtype=None, **kw):
    """Mamba mixer for `version` 1 or 2: mamba-ssm's on CUDA when importable (and not overridden), else ours.

    "On CUDA" means device is a cuda device, or device is None / "meta" and the model is headed for the GPU: the
    device named by an enclosing `building_for`, else any GPU on this host. Pass device="cpu" (or build inside
    `building_for("cpu")`) to get ours on a GPU host.
    """
    global _WARNED
    if version not in (1, 2):
        raise ValueError(f"mamba version must be 1 or 2, got {version!r}")
    kind = torch.device(device).type if device is not None else None
    if kind in (None, "meta"):  # built now, moved later: to the declared target, else to the GPU if there is one
        on_cuda = _TARGET_DEVICE.type == "cuda" if _TARGET_DEVICE is not None else torch.cuda.is_available()
    else:
        on_cuda = kind == "cuda"
    want_cuda = _IMPL == "cuda" or (_IMPL == "auto" and on_cuda)
    if want_cuda:
        try:
            cls = _load_mamba_ssm(version)
            if version == 2 and not HAS_CAUSAL_CONV1D:
                # mamba-ssm's fused split-conv-scan path needs causal-conv1d's kernel; without it Mamba2 still runs
                # the Triton SSD scan, with nn.Conv1d for the convolution (same parameters, same checkpoint)
                kw.setdefault("use_mem_eff_path", False)
            return cls(d_model, layer_idx=layer_idx, device=device, dtype=dtype, **kw)
        except (ImportError, OSError) as e:  # not installed, or built against another CUDA/torch
            if _IMPL == "cuda":
                raise RuntimeError(f"set_mamba_impl('cuda') needs mamba-ssm ({e}); install it on a CUDA machine with "
                                   "`pip install mamba-ssm causal-conv1d --no-build-isolation`") from e
            if not _WARNED:
                _WARNED = True
                logger.warning("=" * 80 + "\nmamba-ssm fast path NOT available (%s): using the pure-PyTorch Mamba on "
                               "CUDA, which is much slower. Install: pip install mamba-ssm causal-conv1d "
                               "--no-build-isolation\n" + "=" * 80, e)
    cls = Mamba if version == 1 else Mamba2
    return cls(d_model, layer_idx=layer_idx, device=device, dtype=dtype, **kw)
