"""Whole hybrid GPT on CPU: training tokens/s and generation tokens/s with vs without the cache.

    python -m bench.model            # tiny and larger config, a few steps each
    python -m bench.model --quick    # fewer steps and tokens, for a smoke run

Training = forward + backward + AdamW step on random tokens. Generation = greedy decoding of
--gen_tokens tokens after a --prompt_len prompt, once through Engine (prefill once, then one token
per step with KV cache + Mamba state) and once recomputing the full sequence every step.
CPU configs use small vocabularies: at this width the lm_head would otherwise dominate.
"""
import time

import torch

from nanochat.cli import ArgumentParser
from nanochat.engine import Engine
from nanochat.gpt import GPT, GPTConfig
from nanochat.mamba import building_for

CONFIGS = {
    "tiny": dict(n_layer=4, n_embd=128, n_head=4, n_kv_head=2, block_pattern="T,T,M,M", vocab_size=4096,
                 sequence_len=256, batch=8),
    "larger": dict(n_layer=8, n_embd=256, n_head=4, n_kv_head=2, block_pattern="T,T,T,M,M,M,M,M",
                   vocab_size=8192, sequence_len=512, batch=4),
}


class NoStopTokenizer:
    """Engine needs stop ids; ids outside the vocabulary are never sampled, so every run is full length."""

    def encode_special(self, name):
        return -1

    def get_bos_token_id(self):
        return -2


def build(spec, mamba_version):
    spec = dict(spec)
    batch = spec.pop("batch")
    torch.manual_seed(0)
    with building_for("cpu"):  # a CPU benchmark, also on a GPU host
        model = GPT(GPTConfig(mamba_version=mamba_version, mamba_headdim=32, **spec))
    model.init_weights()
    return model, batch


def bench_train(model, batch, steps):
    T, V = model.config.sequence_len, model.config.vocab_size
    opt = model.setup_optimizer(lr=1e-3)
    x = torch.randint(0, V, (batch, T))
    model.train()

    def step():
        loss = model(x, targets=x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    return steps * batch * T / dt


@torch.inference_mode()
def bench_generate(model, prompt_len, gen_tokens):
    model.eval()
    prompt = torch.randint(0, model.config.vocab_size, (prompt_len,)).tolist()
    engine = Engine(model, NoStopTokenizer())
    t0 = time.perf_counter()
    cached = [col[0] for col, _ in engine.generate(prompt, max_tokens=gen_tokens, temperature=0.0)]
    t_cached = time.perf_counter() - t0
    ids = list(prompt)
    t0 = time.perf_counter()
    for _ in range(gen_tokens):
        logits = model(torch.tensor([ids]))[0, -1]  # (V,) full recompute of the whole sequence
        ids.append(int(logits.argmax()))
    t_full = time.perf_counter() - t0
    same = cached == ids[prompt_len:]
    return gen_tokens / t_cached, gen_tokens / t_full, same


def main(argv=None):
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_bool("--quick", default=False, help="fewer steps/tokens (smoke run)")
    parser.add_argument("--configs", default="tiny,larger", help="comma-separated names from CONFIGS")
    parser.add_argument("--mamba_version", type=int, default=None, help="1 or 2; default nanochat.mamba default")
    parser.add_argument("--train_steps", type=int, default=5, help="timed training steps per config")
    parser.add_argument("--prompt_len", type=int, default=128, help="prompt tokens before generation")
    parser.add_argument("--gen_tokens", type=int, default=64, help="generated tokens per run")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_steps, args.prompt_len, args.gen_tokens = 2, 32, 16

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    header = f"{'config':8s} {'params':>8s} {'pattern':18s} {'train tok/s':>11s} {'GFLOP/s':>8s} " \
             f"{'gen cached':>10s} {'gen full':>9s} {'speed-up':>8s} {'same':>5s}"
    print(header)
    for name in args.configs.split(","):
        model, batch = build(CONFIGS[name], args.mamba_version)
        train_tps = bench_train(model, batch, args.train_steps)
        gen_cached, gen_full, same = bench_generate(model, args.prompt_len, args.gen_tokens)
        cfg = model.config
        print(f"{name:8s} {model.num_params() / 1e6:7.2f}M {','.join(cfg.block_pattern):18s} {train_tps:11.0f} "
              f"{train_tps * model.estimate_flops() / 1e9:8.2f} {gen_cached:10.1f} {gen_full:9.1f} "
              f"{gen_cached / gen_full:7.2f}x {str(same):>5s}", flush=True)
    print(f"(mamba v{cfg.mamba_version}; generation: prompt {args.prompt_len}, {args.gen_tokens} new tokens, greedy, batch 1)")


if __name__ == "__main__":
    main()
