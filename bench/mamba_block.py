"""Forward+backward tokens/s of one mixer block, printed side by side.

    python -m bench.mamba_block            # seqlen 256 and 1024, batch 8, d_model 256, CPU
    python -m bench.mamba_block --quick    # fewer iterations, for a smoke run
    python -m bench.mamba_block --device cuda --d_model 1024 --seqlens 1024,4096   # adds mamba-ssm's kernels

Compares the sequential reference scan, our chunked Mamba-1, our SSD Mamba-2 and a causal SDPA attention
block of the same width (4 heads, qkv/out projections). Every block is `x + mixer(x)`.
The result picks nanochat.mamba.DEFAULT_MAMBA_VERSION for CPU. On CUDA (bf16 autocast) the sequential reference
is left out and mamba-ssm's own Mamba / Mamba2 (fused kernels) are added when it is installed.
"""
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat.cli import ArgumentParser
from nanochat.common import resolve_device
from nanochat.mamba import HAS_MAMBA_SSM, Mamba, Mamba2, create_mamba_mixer


class AttentionBlock(nn.Module):
    """Causal self-attention of the same width, for reference: x + out(SDPA(qkv(x)))."""

    def __init__(self, d_model, n_head):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x):
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_head, D // self.n_head).permute(2, 0, 3, 1, 4)  # (B, H, L, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.out(y.transpose(1, 2).reshape(B, L, D))


class Residual(nn.Module):
    def __init__(self, mixer):
        super().__init__()
        self.mixer = mixer

    def forward(self, x):
        return x + self.mixer(x)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def tokens_per_s(block, batch, seqlen, d_model, iters, warmup=1, device=torch.device("cpu")):
    """Best of `iters` forward+backward passes after `warmup`: (wall tokens/s, tokens per CPU-second).

    Best-of rather than mean because the machine is shared; the CPU-time figure (all threads of this process)
    is the steadier one when other jobs compete for the cores.
    """
    x = torch.randn(batch, seqlen, d_model, requires_grad=True, device=device)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    for _ in range(warmup):
        with ctx:
            y = block(x)
        y.float().square().mean().backward()
    _sync(device)
    wall, cpu = [], []
    for _ in range(iters):
        t0, c0 = time.perf_counter(), time.process_time()
        with ctx:
            y = block(x)
        y.float().square().mean().backward()
        _sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return batch * seqlen / min(wall), batch * seqlen / min(cpu)


def build_blocks(d_model, d_state2, headdim, chunk_size, device=torch.device("cpu")):
    kw2 = dict(d_state=d_state2, headdim=headdim, chunk_size=chunk_size)
    blocks = {}
    if device.type == "cpu":
        seq = Mamba(d_model, d_state=16)
        seq.chunked = False
        blocks["sequential (Mamba-1 ref)"] = Residual(seq)
    blocks["Mamba-1 chunked"] = Residual(Mamba(d_model, d_state=16))
    blocks["Mamba-2 SSD"] = Residual(Mamba2(d_model, **kw2))
    if device.type == "cuda" and HAS_MAMBA_SSM:
        blocks["mamba-ssm Mamba (CUDA)"] = Residual(create_mamba_mixer(d_model, 1, 0, device=device, d_state=16))
        blocks["mamba-ssm Mamba2 (Triton)"] = Residual(create_mamba_mixer(d_model, 2, 0, device=device, **kw2))
    blocks["attention (SDPA)"] = AttentionBlock(d_model, n_head=max(1, d_model // 64))
    return {name: block.to(device) for name, block in blocks.items()}


def main(argv=None):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="batch size")
    parser.add_argument("--d_model", type=int, default=256, help="model width")
    parser.add_argument("--seqlens", type=str, default="256,1024", help="comma-separated sequence lengths")
    parser.add_argument("--d_state2", type=int, default=16, help="Mamba-2 d_state (GPTConfig.mamba_d_state default)")
    parser.add_argument("--headdim", type=int, default=64, help="Mamba-2 headdim")
    parser.add_argument("--chunk_size", type=int, default=64, help="Mamba-2 SSD chunk length")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per block, best one kept (sequential: 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_bool("--quick", False, "short smoke run (1 iteration, no warmup)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    seqlens = [int(s) for s in args.seqlens.split(",")]
    device = resolve_device(args.device)
    blocks = build_blocks(args.d_model, args.d_state2, args.headdim, args.chunk_size, device)
    iters, warmup = (1, 0) if args.quick else (args.iters, 1)
    results = {name: {} for name in blocks}
    for L in seqlens:
        for name, block in blocks.items():
            if name.startswith("sequential"):  # the reference is slow: one untimed-warmup-free pass
                results[name][L] = tokens_per_s(block, args.batch, L, args.d_model, 1, warmup=0)
            else:
                try:
                    results[name][L] = tokens_per_s(block, args.batch, L, args.d_model, iters, warmup=warmup,
                                                    device=device)
                except Exception as e:  # e.g. mamba-ssm installed without its CUDA kernel: report, time the rest
                    print(f"{name} at L={L}: not timed ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
                    results[name][L] = (float("nan"), float("nan"))
    where = f"CUDA ({torch.cuda.get_device_name()}, bf16 autocast)" if device.type == "cuda" else \
        f"CPU ({torch.get_num_threads()} threads)"
    print(f"forward+backward, {where}, batch {args.batch}, d_model {args.d_model}, "
          f"Mamba-2 d_state {args.d_state2} headdim {args.headdim} chunk {args.chunk_size}; best of {iters}")
    attn = results["attention (SDPA)"]
    for k, metric in enumerate(["wall tokens/s", "tokens per CPU-second"]):
        print(f"{metric:<26}" + "".join(f"{'L=' + str(L):>12}{'vs attn':>9}" for L in seqlens))
        for name, row in results.items():
            cells = "".join(f"{row[L][k]:>12,.0f}{row[L][k] / attn[L][k]:>8.2f}x" for L in seqlens)
            print(f"  {name:<24}{cells}")
    return results


if __name__ == "__main__":
    main()
