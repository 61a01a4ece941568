"""Which mixer to build: mamba-ssm's fused CUDA modules when they can run, the pure-PyTorch mirrors otherwise.

One checkpoint serves both (same parameter names), so the choice is made per build, from the device the model
is headed for: `create_mamba_mixer`, with `building_for` (models built on "meta" and moved later) and the
`set_mamba_impl` override. mamba_ssm is imported only when chosen: it pulls in triton and CUDA extensions.

CPU default: DEFAULT_MAMBA_VERSION = 2, picked with `python -m bench.mamba_block` (batch 8, d_model 256, fwd+bwd,
shared 2-core machine, tokens/s at seqlen 1024): Mamba-2 SSD 2.9K vs attention 6.2K (0.46x) with 2 threads, 6.8K vs
7.7K (0.88x) with 1 thread; Mamba-1 chunked 0.9K-1.0K (0.13-0.15x), because it must materialise a (B, L, ED, N)
state and is memory-bound (it beats the sequential reference ~3.7x with 2 threads, ties it with 1).
"""
from __future__ import annotations

import importlib.util
import logging
from contextlib import contextmanager

import torch

from nanochat.mamba.mamba1 import Mamba
from nanochat.mamba.mamba2 import Mamba2

logger = logging.getLogger(__package__)  # "nanochat.mamba", the name its warnings had before the package split

# Cheap check only: importing mamba_ssm pulls in triton and CUDA extensions, so the real import is lazy.
HAS_MAMBA_SSM = importlib.util.find_spec("mamba_ssm") is not None
HAS_CAUSAL_CONV1D = importlib.util.find_spec("causal_conv1d") is not None
DEFAULT_MAMBA_VERSION = 2

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
