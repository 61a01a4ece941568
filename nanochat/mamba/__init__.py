"""Mamba mixers that run everywhere with ONE set of weights.

On CUDA with `mamba_ssm` importable, `create_mamba_mixer` returns mamba-ssm's own `Mamba` / `Mamba2`
(fused kernels). Everywhere else it returns the pure-PyTorch mirrors, which have exactly the same parameter
names and shapes (so one checkpoint loads either way), the same init, and the same
`forward(hidden_states, inference_params=None)` / `allocate_inference_cache` / `step` methods, so
the inference engine can drive either.

Laid out as state-spaces/mamba lays out mamba_ssm, one job per module:
    selective_scan  Mamba-1 scan: chunked, hand-written backward; `selective_scan_ref`  (ops/selective_scan_interface.py)
    ssd             Mamba-2 SSD chunked scan; `ssd_ref`                                 (ssd_minimal_discrete)
    mamba1          `Mamba` mixer                                                       (modules/mamba_simple.py)
    mamba2          `Mamba2` mixer and `RMSNormGated`                   (modules/mamba2.py, ops/triton/layernorm_gated.py)
    inference       `InferenceParams` and the decoding-state helpers                    (utils/generation.py)
    dispatch        `create_mamba_mixer`: mamba-ssm's kernels on CUDA, ours elsewhere; the CPU default version

Every name is imported from this package (`from nanochat.mamba import Mamba2, create_mamba_mixer`), as before
it was split. To patch the factory's state in tests (`_load_mamba_ssm`, `_WARNED`), patch nanochat.mamba.dispatch.

Shape glossary:
    B  batch size                    L  sequence length
    D  d_model                       ED d_inner = expand * d_model
    N  d_state                       R  dt_rank (Mamba-1); heads per B/C group, H // G (SSD)
    H  nheads = d_ssm // headdim     P  headdim (Mamba-2)
    G  ngroups (Mamba-2 B/C groups)  W  d_conv (conv kernel width)
    C  number of chunks              T  chunk length
"""
from nanochat.mamba.dispatch import (
    DEFAULT_MAMBA_VERSION,
    HAS_CAUSAL_CONV1D,
    HAS_MAMBA_SSM,
    _load_mamba_ssm,
    building_for,
    create_mamba_mixer,
    set_mamba_impl,
)
from nanochat.mamba.inference import InferenceParams
from nanochat.mamba.mamba1 import Mamba
from nanochat.mamba.mamba2 import Mamba2, RMSNormGated
from nanochat.mamba.selective_scan import linear_scan, selective_scan, selective_scan_ref
from nanochat.mamba.ssd import CPU_SSD_CHUNK, segsum, ssd_chunked, ssd_ref

__all__ = [
    "CPU_SSD_CHUNK", "DEFAULT_MAMBA_VERSION", "HAS_CAUSAL_CONV1D", "HAS_MAMBA_SSM", "InferenceParams", "Mamba", "Mamba2",
    "RMSNormGated", "_load_mamba_ssm", "building_for", "create_mamba_mixer", "linear_scan", "segsum", "selective_scan",
    "selective_scan_ref", "set_mamba_impl", "ssd_chunked", "ssd_ref",
]
