"""Mamba mixers: chunked scans vs sequential reference, mamba-ssm parameter layout, prefill + decode, factory.

    python -m pytest -q tests/test_mamba.py          # CPU part (gpu tests skip without CUDA + mamba_ssm)
    python -m pytest -q -m gpu tests/test_mamba.py   # on a CUDA host with mamba-ssm installed
"""
import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nanochat import mamba as M
from nanochat.mamba import dispatch
from nanochat.mamba import InferenceParams, Mamba, Mamba2, create_mamba_mixer, linear_scan, set_mamba_impl

FIXTURE = Path(__file__).parent / "data" / "mamba_ssm_state_dict_shapes.json"
TOL = 1e-4  # fp32, relative to the reference's magnitude (max(1, max|ref|))


def assert_close(name, ours, ref, tol=TOL):
    """Print the gap, then assert it is below tol * max(1, max|ref|)."""
    diff = (ours - ref).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    print(f"{name}: max abs diff {diff:.3e} (ref scale {scale:.2e})")
    assert torch.isfinite(ours).all(), f"{name}: non-finite values"
    assert diff <= tol * scale, f"{name}: max abs diff {diff:.3e} > {tol} * {scale:.2e}"


def forward_and_grads(module, x):
    """Output and gradients w.r.t. the input and every parameter, for a fixed random projection of the output."""
    x = x.detach().requires_grad_(True)
    y = module(x)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.device)
    grads = torch.autograd.grad((y * w).sum(), [x] + list(module.parameters()))
    names = ["input"] + [n for n, _ in module.named_parameters()]
    return y.detach(), dict(zip(names, grads))


def check_against_reference(module, x):
    module.chunked = True
    y, g = forward_and_grads(module, x)
    module.chunked = False
    y_ref, g_ref = forward_and_grads(module, x)
    module.chunked = True
    assert_close("output", y, y_ref)
    for name in g_ref:
        assert_close(f"grad {name}", g[name], g_ref[name])


# -----------------------------------------------------------------------------
# scans

@pytest.mark.parametrize("L", [1, 2, 9, 16, 50])
def test_linear_scan_gradcheck(L):
    """Chunked scan + hand-written reverse-scan backward are exact (float64 gradcheck), ragged L included."""
    a = torch.rand(1, L, 2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, L, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(linear_scan, (a, b))


@pytest.mark.parametrize("L", [1, 7, 20])
def test_selective_scan_gradcheck(L):
    """The fused Mamba-1 scan's hand-written backward (u, delta, A, B, C; y and last state) is exact in float64."""
    torch.manual_seed(0)
    f64 = dict(dtype=torch.float64, requires_grad=True)
    u, delta = torch.randn(1, L, 3, **f64), torch.rand(1, L, 3, **f64)
    A = (-torch.rand(3, 2, dtype=torch.float64) * 2).requires_grad_(True)
    B, C = torch.randn(1, L, 2, **f64), torch.randn(1, L, 2, **f64)
    D = torch.randn(3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *t: M.selective_scan(*t, D), (u, delta, A, B, C))
    y, last = M.selective_scan(u, delta, A, B, C, D)
    y_ref, last_ref = M.selective_scan_ref(u, delta, A, B, C, D)
    assert_close("selective scan y", y, y_ref)
    assert_close("selective scan last state", last, last_ref)


def test_linear_scan_matches_loop_with_tiny_decays():
    """Decays that underflow (a ~ 1e-30 or exactly 0) must not produce inf/NaN."""
    a = torch.rand(2, 100, 4) ** 40
    a[:, 50] = 0.0
    b = torch.randn(2, 100, 4)
    h, hs = torch.zeros(2, 4), []
    for a_t, b_t in zip(a.unbind(1), b.unbind(1)):
        h = a_t * h + b_t
        hs.append(h)
    assert_close("scan", linear_scan(a, b), torch.stack(hs, 1))


@pytest.mark.parametrize("B,L,d_model,d_state", [(2, 1, 16, 4), (2, 37, 32, 16), (1, 130, 16, 8)])
def test_mamba1_chunked_matches_sequential(B, L, d_model, d_state):
    torch.manual_seed(0)
    m = Mamba(d_model, d_state=d_state, layer_idx=0)
    check_against_reference(m, torch.randn(B, L, d_model))


@pytest.mark.parametrize("L,kw", [
    (37, dict(d_state=16, headdim=16, chunk_size=16)),          # ragged: 2 full chunks + 5
    (64, dict(d_state=8, headdim=16, chunk_size=16)),            # exact multiple
    (5, dict(d_state=16, headdim=8, chunk_size=256)),            # shorter than one chunk
    (29, dict(d_state=8, headdim=8, ngroups=2, D_has_hdim=True, chunk_size=8)),
    (23, dict(d_state=8, headdim=16, rmsnorm=False, chunk_size=8)),
    (19, dict(d_state=8, headdim=16, d_ssm=32, norm_before_gate=True, chunk_size=8)),
])
def test_mamba2_chunked_matches_sequential(L, kw):
    torch.manual_seed(0)
    m = Mamba2(32, layer_idx=0, **kw)
    check_against_reference(m, torch.randn(2, L, 32))


def test_ssd_strong_decay_is_finite_and_exact():
    """dt * A of -100 per step (exp would overflow if any exp saw a positive segment sum): still exact, no NaN grads."""
    torch.manual_seed(0)
    x = torch.randn(1, 45, 4, 8)
    dt = (torch.rand(1, 45, 4) * 10).requires_grad_(True)
    A = -torch.tensor([0.5, 2.0, 10.0, 16.0])
    B, C = torch.randn(1, 45, 1, 8), torch.randn(1, 45, 1, 8)
    y, s = M.ssd_chunked(x, dt, A, B, C, chunk_size=16)
    y_ref, s_ref = M.ssd_ref(x, dt, A, B, C)
    assert_close("ssd y", y, y_ref)
    assert_close("ssd final state", s, s_ref)
    g, = torch.autograd.grad(y.square().sum(), dt)
    g_ref, = torch.autograd.grad(y_ref.square().sum(), dt)
    assert_close("ssd grad dt", g, g_ref)


# -----------------------------------------------------------------------------
# parameter layout and init (one checkpoint for both implementations)

FIXTURE_CASES = json.loads(FIXTURE.read_text())["cases"]


@pytest.mark.parametrize("case", FIXTURE_CASES, ids=lambda c: f"v{c['version']}-" + "-".join(map(str, c["kwargs"].values())))
def test_state_dict_matches_mamba_ssm_layout(case):
    kw = dict(case["kwargs"])
    mixer = create_mamba_mixer(kw.pop("d_model"), case["version"], layer_idx=0, **kw)
    got = [[k, list(v.shape)] for k, v in mixer.state_dict().items()]
    assert got == case["state_dict"]


def test_init_matches_mamba_ssm():
    m1 = Mamba(32, d_state=8, dt_min=0.01, dt_max=0.05)
    assert torch.equal(m1.A_log, torch.log(torch.arange(1, 9.0)).repeat(64, 1))
    dt = F.softplus(m1.dt_proj.bias)
    assert dt.min() >= 0.01 - 1e-6 and dt.max() <= 0.05 + 1e-6
    assert m1.A_log.dtype == m1.D.dtype == torch.float32 and m1.dt_proj.bias._no_reinit
    m2 = Mamba2(32, d_state=8, headdim=16, A_init_range=(2, 4))
    A = torch.exp(m2.A_log)
    assert A.min() >= 2 - 1e-5 and A.max() <= 4 + 1e-5 and torch.equal(m2.D, torch.ones(4))
    assert torch.equal(m2.norm.weight, torch.ones(64))


# -----------------------------------------------------------------------------
# inference: prefill with inference_params, then one token at a time

@pytest.mark.parametrize("version,prefill", [(1, 2), (1, 9), (2, 2), (2, 9)])
def test_prefill_then_step_matches_full_forward(version, prefill):
    torch.manual_seed(0)
    kw = dict(d_state=8) if version == 1 else dict(d_state=8, headdim=8, ngroups=2, chunk_size=4)
    mixer = create_mamba_mixer(32, version, layer_idx=3, **kw)
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        full = mixer(x)
        params = InferenceParams(max_seqlen=17, max_batch_size=2)
        outs = [mixer(x[:, :prefill], inference_params=params)]
        assert 3 in params.key_value_memory_dict  # allocated on the first call
        for t in range(prefill, 17):
            params.seqlen_offset = t
            outs.append(mixer(x[:, t:t + 1], inference_params=params))
    assert_close(f"decode v{version}", torch.cat(outs, dim=1), full)
    conv_state, ssm_state = params.key_value_memory_dict[3]
    ref_conv, ref_ssm = mixer.allocate_inference_cache(2, 17)
    assert conv_state.shape == ref_conv.shape and ssm_state.shape == ref_ssm.shape


def test_step_updates_states_in_place():
    mixer = Mamba2(16, d_state=4, headdim=8, layer_idx=0)
    conv_state, ssm_state = mixer.allocate_inference_cache(3, 10)
    assert conv_state.shape == (3, 16 * 2 + 2 * 4, 4) and ssm_state.shape == (3, 4, 8, 4)
    out, c2, s2 = mixer.step(torch.randn(3, 1, 16), conv_state, ssm_state)
    assert out.shape == (3, 1, 16) and c2 is conv_state and s2 is ssm_state
    assert ssm_state.abs().sum() > 0 and conv_state.abs().sum() > 0


# -----------------------------------------------------------------------------
# factory and override hook

def test_factory_on_cpu_returns_pure_torch():
    assert isinstance(create_mamba_mixer(16, 1, layer_idx=0), Mamba)
    assert isinstance(create_mamba_mixer(16, 2, layer_idx=0, d_state=8, headdim=8), Mamba2)
    with pytest.raises(ValueError, match="version must be 1 or 2"):
        create_mamba_mixer(16, 3, layer_idx=0)
    with pytest.raises(ValueError, match="mamba impl"):
        set_mamba_impl("triton")
    assert M.DEFAULT_MAMBA_VERSION in (1, 2)


@pytest.mark.skipif(M.HAS_MAMBA_SSM, reason="mamba_ssm is installed here")
def test_forcing_cuda_impl_without_mamba_ssm_is_a_clear_error():
    set_mamba_impl("cuda")
    try:
        with pytest.raises(RuntimeError, match="pip install mamba-ssm"):
            create_mamba_mixer(16, 2, layer_idx=0)
    finally:
        set_mamba_impl("auto")


def test_missing_fast_path_on_cuda_warns_once(monkeypatch, caplog):
    """Simulated: a CUDA device asked for, mamba-ssm import fails -> one logging warning, our module is used."""
    def no_mamba_ssm(version):
        raise ImportError("No module named 'mamba_ssm'")
    monkeypatch.setattr(dispatch, "_load_mamba_ssm", no_mamba_ssm)  # the factory's own module, not the re-export
    monkeypatch.setattr(dispatch, "_WARNED", False)
    built = []
    monkeypatch.setattr(dispatch, "Mamba2", lambda *a, **kw: built.append(kw) or "ours")
    with caplog.at_level(logging.WARNING, logger="nanochat.mamba"):
        assert create_mamba_mixer(16, 2, layer_idx=0, device="cuda") == "ours"
        create_mamba_mixer(16, 2, layer_idx=1, device="cuda")
    warnings = [r for r in caplog.records if "fast path NOT available" in r.getMessage()]
    assert len(warnings) == 1 and len(built) == 2


# -----------------------------------------------------------------------------
# against the real mamba-ssm (CUDA host with mamba-ssm installed)

gpu = pytest.mark.gpu
requires_mamba_ssm = pytest.mark.skipif(not (torch.cuda.is_available() and M.HAS_MAMBA_SSM),
                                        reason="needs CUDA and mamba_ssm")
GPU_CASES = [
    pytest.param(1, dict(d_state=16), id="v1"),
    pytest.param(2, dict(d_state=64, headdim=32, chunk_size=64, use_mem_eff_path=False), id="v2-triton-ssd"),
    pytest.param(2, dict(d_state=64, headdim=32, chunk_size=64), id="v2-fused",
                 marks=pytest.mark.skipif(not M.HAS_CAUSAL_CONV1D, reason="fused path needs causal-conv1d")),
]


def _pair(version, kw):
    """mamba-ssm's module and ours on the same weights, both on CUDA in fp32."""
    torch.manual_seed(0)
    theirs = M._load_mamba_ssm(version)(64, layer_idx=0, device="cuda", **kw)
    ours = (Mamba if version == 1 else Mamba2)(64, layer_idx=0, device="cuda", **kw)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


@gpu
@requires_mamba_ssm
@pytest.mark.parametrize("case", FIXTURE_CASES[:2] + FIXTURE_CASES[3:5], ids=lambda c: f"v{c['version']}")
def test_fixture_matches_real_mamba_ssm(case):
    kw = dict(case["kwargs"])
    mixer = M._load_mamba_ssm(case["version"])(kw.pop("d_model"), layer_idx=0, device="cuda", **kw)
    assert [[k, list(v.shape)] for k, v in mixer.state_dict().items()] == case["state_dict"]


@gpu
@requires_mamba_ssm
@pytest.mark.parametrize("version,kw", GPU_CASES)
def test_against_mamba_ssm_forward_backward(version, kw):
    theirs, ours = _pair(version, kw)
    x = torch.randn(2, 200, 64, device="cuda")
    y_t, g_t = forward_and_grads(theirs, x)
    y_o, g_o = forward_and_grads(ours, x)
    assert_close("vs mamba-ssm output", y_o, y_t, tol=2e-3)
    for name in g_t:
        assert_close(f"vs mamba-ssm grad {name}", g_o[name], g_t[name], tol=2e-3)


@gpu
@requires_mamba_ssm
@pytest.mark.parametrize("version,kw", GPU_CASES[:2])
def test_against_mamba_ssm_prefill_and_step(version, kw):
    theirs, ours = _pair(version, kw)
    x = torch.randn(2, 40, 64, device="cuda")
    outs = {}
    with torch.no_grad():
        for name, mixer in (("theirs", theirs), ("ours", ours)):
            params = InferenceParams(max_seqlen=40, max_batch_size=2)
            ys = [mixer(x[:, :30], inference_params=params)]
            for t in range(30, 40):
                params.seqlen_offset = t
                ys.append(mixer(x[:, t:t + 1], inference_params=params))
            outs[name] = torch.cat(ys, dim=1)
    assert_close("vs mamba-ssm prefill+decode", outs["ours"], outs["theirs"], tol=2e-3)


@pytest.mark.parametrize("version", [1, 2])
def test_bf16_autocast_forward_backward_tracks_fp32(version):
    """Training runs under bf16 autocast on GPUs: the mixers must run there and stay close to fp32."""
    torch.manual_seed(0)
    mixer = (Mamba if version == 1 else Mamba2)(32, layer_idx=0)
    x = torch.randn(2, 48, 32)
    ref_y, ref_g = forward_and_grads(mixer, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, g = forward_and_grads(mixer, x)
    assert y.dtype == torch.bfloat16
    assert (y.float() - ref_y).norm() <= 0.05 * ref_y.norm()
    for name in ref_g:
        assert torch.isfinite(g[name]).all(), name
        assert (g[name].float() - ref_g[name]).norm() <= 0.1 * ref_g[name].norm() + 1e-6, name
