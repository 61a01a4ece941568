#!/usr/bin/env bash
# The GPU-only checks in one pass, for a CUDA host with PyTorch (a lent H100, a cluster node):
#   1. installs mamba-ssm from its sdist: by default its Python/Triton parts only (a minute); with BUILD_CUDA=1 it
#      also compiles causal-conv1d and the Mamba-1 CUDA kernel for this GPU's architecture only, in the background
#      (their setup.py targets ~10 architectures; even one took over 5 minutes on a 16-core H100 host);
#   2. runs the gpu-marked tests against the real mamba-ssm;
#   3. times the mixer blocks (ours vs mamba-ssm's kernels vs attention) and the fine-tune step (tokens/s, MFU).
#
#   bash bench/gpu_check.sh SDIST_DIR LOG_DIR     # SDIST_DIR holds mamba_ssm-*.tar.gz (and causal_conv1d-*.tar.gz)
#
# Get the sdists where pip can reach PyPI (no compilation happens there):
#   MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE \
#     pip download --no-deps --no-build-isolation mamba-ssm causal-conv1d -d SDIST_DIR
set -u
SDISTS=$(realpath "${1:?sdist folder}")
LOGS=$(realpath -m "${2:-gpu_check_logs}")
BUILD_DEADLINE_S=${BUILD_DEADLINE_S:-300}
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
t0=$(date +%s)
stamp() { echo "[gpu_check +$(( $(date +%s) - t0 ))s] $*"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

build_one() {  # $1: sdist tarball, $2: parallel compile jobs
    local work src
    work=$(mktemp -d) && tar xzf "$1" -C "$work" && src=$(ls -d "$work"/*/)
    # compile for this GPU only: override cc_flag right before the compile flags are assembled
    python3 - "$src/setup.py" <<'EOF' || return 1
import sys, torch
path = sys.argv[1]
text = open(path).read()
cap = "%d%d" % torch.cuda.get_device_capability()
marker = "    # HACK: The compiler flag"
assert marker in text, "setup.py layout changed: cannot restrict the architectures"
text = text.replace(marker, f'    cc_flag = ["-gencode", "arch=compute_{cap},code=sm_{cap}"]\n' + marker, 1)
open(path, "w").write(text)
EOF
    (cd "$src" && MAX_JOBS=$2 MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE \
        python3 -m pip install --no-build-isolation --no-deps --no-index --no-cache-dir .)
}

if [ "${BUILD_CUDA:-0}" = 1 ]; then
    stamp "building causal-conv1d and mamba-ssm for this GPU in the background"
    ( build_one "$(ls "$SDISTS"/causal_conv1d-*.tar.gz)" 3 > "$LOGS/build_causal_conv1d.log" 2>&1
      echo "causal-conv1d rc=$?" >> "$LOGS/build_status"
      build_one "$(ls "$SDISTS"/mamba_ssm-*.tar.gz)" 5 > "$LOGS/build_mamba_ssm.log" 2>&1
      echo "mamba-ssm rc=$?" >> "$LOGS/build_status" ) &
    build_pid=$!
    stamp "fine-tune step throughput, pure-PyTorch mixers (the compiler shares the CPUs meanwhile)"
    timeout 150 python3 -m bench.train --device cuda --configs tiny,small,d12 --steps 20 --warmup 3 2>&1 | tee "$LOGS/bench_train_torch.txt"
    while kill -0 $build_pid 2>/dev/null && [ $(( $(date +%s) - t0 )) -lt "$BUILD_DEADLINE_S" ]; do sleep 5; done
    if kill -0 $build_pid 2>/dev/null; then
        stamp "build still running at the deadline: stopping it"
        kill $build_pid; pkill -f "pip install --no-build-isolation"; pkill nvcc; pkill cicc; pkill ptxas; pkill ninja
    fi
    cat "$LOGS/build_status" 2>/dev/null; tail -3 "$LOGS/build_mamba_ssm.log" 2>/dev/null
    DESELECT=""
else
    # Quick mode (minutes of GPU time, not tens): mamba-ssm's Python and Triton parts only. Mamba-2 (our default)
    # runs entirely on Triton; without causal-conv1d, mamba-ssm's Mamba2 uses nn.Conv1d (use_mem_eff_path=False,
    # which create_mamba_mixer sets). The Mamba-1 CUDA kernel is not built: a stand-in module lets mamba_ssm import
    # and raises if Mamba-1's kernel is called, and the two Mamba-1 kernel comparisons are deselected.
    stamp "installing mamba-ssm without its CUDA extension (Triton kernels only)"
    work=$(mktemp -d) && tar xzf "$(ls "$SDISTS"/mamba_ssm-*.tar.gz)" -C "$work"
    (cd "$work"/*/ && MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE python3 -m pip install -q --no-build-isolation --no-deps --no-index \
        --no-cache-dir .) > "$LOGS/build_mamba_ssm.log" 2>&1 || { stamp "install failed"; tail -20 "$LOGS/build_mamba_ssm.log"; }
    stub=$(mktemp -d)
    printf '%s\n' 'def __getattr__(name):' \
        '    raise ImportError("selective_scan_cuda was not built (bench/gpu_check.sh quick mode)")' > "$stub/selective_scan_cuda.py"
    export PYTHONPATH="$stub${PYTHONPATH:+:$PYTHONPATH}"
    DESELECT="not (v1 and (forward_backward or prefill_and_step or loads_on_cuda))"
fi
python3 -c "import mamba_ssm; from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined; print('mamba-ssm', mamba_ssm.__version__, 'imports')" \
    2>&1 | tail -1 | tee "$LOGS/mamba_ssm_import.txt"

stamp "gpu-marked tests"
timeout 150 python3 -m pytest -m gpu ${DESELECT:+-k "$DESELECT"} -q -ra -p no:cacheprovider \
    tests/test_mamba.py tests/test_gpt.py tests/test_checkpoint.py 2>&1 | tee "$LOGS/pytest_gpu.txt" | tail -25

stamp "mixer blocks on the GPU"
timeout 120 python3 -m bench.mamba_block --device cuda --d_model 1024 --headdim 64 --d_state2 64 --seqlens 1024,4096 \
    --batch 8 --iters 3 2>&1 | tee "$LOGS/bench_mamba_block.txt"

stamp "fine-tune step throughput with mamba-ssm's mixers where they import"
timeout 120 python3 -m bench.train --device cuda --configs tiny,small,d12 --steps 20 --warmup 3 2>&1 | tee "$LOGS/bench_train_quiet.txt"
stamp "done"
