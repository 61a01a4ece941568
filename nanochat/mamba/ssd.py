"""Mamba-2 SSD scan on CPU (pure PyTorch): the chunked state-space-duality form, and its sequential reference.

Mirrors the role of mamba_ssm's ssd_minimal_discrete (the Triton kernel's math): an intra-chunk quadratic form plus
state passing between chunks. `ssd_ref` (one step per timestep) is kept as the test reference.
Shapes follow the glossary in nanochat/mamba/__init__.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# SSD block length on CPU. chunk_size only sets the blocking of mamba-ssm's kernel (the math is the same for any
# block length); on CPU 64 measured fastest for d_state 16..64 (the intra-chunk part grows with T, the rest with L/T).
CPU_SSD_CHUNK = 64


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
