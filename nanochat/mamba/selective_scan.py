"""Mamba-1 selective scan on CPU (pure PyTorch): the chunked scan with a hand-written backward, and its reference.

Mirrors the role of mamba_ssm/ops/selective_scan_interface.py (selective_scan_fn / selective_scan_ref), in the
(B, L, ED) layout. h_t = a_t * h_{t-1} + b_t runs as a two-level scan, not a Python loop over time: a loop of
~sqrt(L) steps inside chunks, vectorised over all chunks, then ~sqrt(L) carry steps between chunks.
`selective_scan` wraps it in a custom autograd Function whose backward is the same scan run in reverse, so no
per-timestep graph is built. `selective_scan_ref` (one step per timestep) is kept as the test reference.
Shapes follow the glossary in nanochat/mamba/__init__.py.
"""
from __future__ import annotations

import math

import torch


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
