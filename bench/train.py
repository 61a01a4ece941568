"""Training throughput of the RAG fine-tune step: default tiny CPU config vs a larger one, side by side.

Same code path as scripts/rag_finetune.py: ShardLoader batches of RAG-shaped examples (prompt
masked, ~12 answer tokens supervised), SupervisedLoss, AdamW from GPT.setup_optimizer, set_lr.
On CUDA it also prints MFU from GPT.estimate_flops (bf16 autocast, H100 dense peak by default).

    python -m bench.train                       # tiny vs larger, CPU
    python -m bench.train --device cuda --steps 20 --configs small,d12
"""
from __future__ import annotations

import time

import numpy as np
import torch

from nanochat.train import loop as T
from nanochat.cli import ArgumentParser
from nanochat.common import resolve_device

# name: (block_pattern, n_embd, n_head, max_seq_len, device_batch_size, vocab)
CONFIGS = {
    "tiny": ("T,T,M,M", 128, 4, 256, 8, 2048),       # configs/rag_tiny_cpu.py
    "small": ("T,T,M,M,M,M", 256, 4, 512, 8, 4096),  # the "larger" CPU config
    "d12": ("T,T,T,T,T,M,M,M,M,M,M,M", 768, 6, 2048, 8, 32768),  # GPU scale
}


def fake_examples(n: int, seq_len: int, vocab: int, answer_tokens: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(0, vocab, seq_len + 1).astype(np.int32)
        mask = np.zeros(seq_len + 1, np.uint8)
        mask[-answer_tokens:] = 1
        out.append((ids, mask))
    return out


def bench_config(name: str, device, steps: int, warmup: int, peak_flops: float) -> dict:
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.mamba import building_for
    pattern, n_embd, n_head, seq_len, batch, vocab = CONFIGS[name]
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=seq_len, vocab_size=vocab, n_layer=len(pattern.split(",")), n_head=n_head,
                    n_embd=n_embd, block_pattern=pattern)
    with building_for(device):
        model = GPT(cfg).to(device)
    model.init_weights()
    optimizer = model.setup_optimizer(lr=1e-3)
    loss_model = T.SupervisedLoss(model)
    loader = T.ShardLoader(fake_examples(batch * (steps + warmup), seq_len, vocab), batch, seq_len)
    autocast_ctx = T.autocast_for(device)
    tokens, t0 = 0, None
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, tokens = time.perf_counter(), 0
        T.set_lr(optimizer, T.lr_multiplier(step, warmup + steps))
        x, y = loader.next_batch()
        x, y = x.to(device), y.to(device)
        with autocast_ctx:
            loss = loss_model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += x.numel()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tps = tokens / dt
    row = {"config": name, "params_M": model.num_params() / 1e6, "tokens_per_s": tps, "step_s": dt / steps}
    if device.type == "cuda":
        # estimate_flops counts the full-sequence lm_head; SupervisedLoss skips most of it, so this is an upper bound
        row["mfu"] = model.estimate_flops() * tps / peak_flops
    return row


def main(argv=None):
    p = ArgumentParser(description="RAG fine-tune training throughput")
    p.add_argument("--configs", default="tiny,small", help=f"comma list of {', '.join(CONFIGS)}")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--steps", type=int, default=5, help="timed steps per config")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--num_threads", type=int, default=-1, help="CPU threads (-1 = auto: 1 when oversubscribed)")
    p.add_argument("--peak_tflops", type=float, default=989.0, help="accelerator bf16 dense peak for MFU (H100 SXM: 989)")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    threads = T.set_threads(args.num_threads, device)
    rows = [bench_config(c.strip(), device, args.steps, args.warmup, args.peak_tflops * 1e12)
            for c in args.configs.split(",") if c.strip()]
    print(f"device {device} ({threads} CPU threads); fwd+bwd+AdamW per step, loss on answer tokens only")
    print(f"{'config':<8} {'pattern':<26} {'params':>8} {'seq x batch':>12} {'tokens/s':>10} {'s/step':>8}"
          + ("  MFU" if device.type == "cuda" else ""))
    for r in rows:
        pattern, _, _, seq_len, batch, _ = CONFIGS[r["config"]]
        line = (f"{r['config']:<8} {pattern:<26} {r['params_M']:>7.2f}M {f'{seq_len} x {batch}':>12} "
                f"{r['tokens_per_s']:>10,.0f} {r['step_s']:>8.3f}")
        if "mfu" in r:
            line += f"  {100 * r['mfu']:.1f}%"
        print(line)
    if len(rows) > 1:
        print(f"{rows[0]['config']} is {rows[0]['tokens_per_s'] / rows[1]['tokens_per_s']:.1f}x the tokens/s of {rows[1]['config']}")
    return rows


if __name__ == "__main__":
    main()
