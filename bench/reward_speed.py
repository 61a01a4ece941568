"""REFRAG reward-phase speed: steps/s with one question sampled at a time (before) vs a step's questions x samples
sampled as one batch (after, nanochat.train.reward_phase.sample_groups), side by side in one run.

    flock /tmp/nanochat-heavy.lock python -m bench.reward_speed --results results --steps 6

Uses a DAG run's REFRAG model (refrag/synthetic_refrag under results/checkpoints) as the policy, its multi-hop
retrieval table and training questions, and the run's reward-phase settings from the checkpoint meta
(device_batch_size questions x num_samples answers, max_new_tokens, temperature, seed, top_k 50). A step is what
run_reward_phase does: sample, score (nanochat.rag.rewards), group advantages, policy-gradient loss and backward
over each question, one AdamW step. Both paths start from the same weights and optimizer state and use the same
per-question seeds (step_seed), so they also say whether batching changed a single sampled token or loss.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from nanochat.cli import ArgumentParser
from nanochat.engine import Engine
from nanochat.train import reward_phase as RP


def one_question_at_a_time(engine, prompts, seeds, num_samples, max_tokens, temperature, top_k=50):
    """The reward phase's sampling before batching: engine.generate per question (num_samples rows of one prompt)."""
    stop, groups = engine.stop_tokens(), []
    for prompt, seed in zip(prompts, seeds):
        out, done = [[] for _ in range(num_samples)], [False] * num_samples
        for column, _ in engine.generate(prompt, num_samples=num_samples, max_tokens=max_tokens,
                                         temperature=temperature, top_k=top_k, seed=seed):
            for i, tok in enumerate(column):
                if not done[i]:
                    out[i].append(tok)
                    done[i] = tok in stop
        groups.append(out)
    return groups


def batched(engine, prompts, seeds, num_samples, max_tokens, temperature, top_k=50):
    return RP.sample_groups(engine, prompts, seeds, num_samples, max_tokens, temperature, top_k)


def run_steps(model, tokenizer, items, prompts, cfg, steps, sampler):
    """`steps` reward-phase steps from the given model -> (seconds, seconds sampling, [groups per step], [losses])."""
    model = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.8, 0.95), weight_decay=0.0)
    engine = Engine(model, tokenizer)
    pad = tokenizer.get_bos_token_id()
    all_groups, losses, sampling = [], [], 0.0
    t0 = time.perf_counter()
    for step in range(steps):
        idx = [(step * cfg["batch"] + b) % len(items) for b in range(cfg["batch"])]
        seeds = [RP.step_seed(cfg["seed"], step, b, 0) for b in range(len(idx))]
        model.eval()
        t1 = time.perf_counter()
        groups = sampler(engine, [prompts[i] for i in idx], seeds, cfg["num_samples"], cfg["max_new_tokens"],
                         cfg["temperature"])
        sampling += time.perf_counter() - t1
        model.train()
        loss_sum = 0.0
        for i, samples in zip(idx, groups):
            scored = RP.score_samples(tokenizer, samples, items[i])
            adv = RP.group_advantages([s["reward"] for s in scored])
            inputs, targets = RP.policy_gradient_batch(prompts[i], samples, pad)
            loss = RP.policy_gradient_loss(model, inputs, targets, adv)
            (loss / len(idx)).backward()
            loss_sum += loss.item() / len(idx)
        opt.step()
        opt.zero_grad(set_to_none=True)
        all_groups.append(groups)
        losses.append(loss_sum)
    return time.perf_counter() - t0, sampling, all_groups, losses


def load_run(results):
    from nanochat.checkpoint_manager import load_model
    from nanochat.data.queries import load_queries
    from nanochat.rag import multihop_data as MD
    from nanochat.rag.conversation import ChunkStore
    from nanochat.retrieval.kb import KnowledgeBase
    from nanochat.retrieval.precompute import load_precomputed
    results = Path(results)
    model, tokenizer, meta = load_model("refrag", "cpu", phase="eval", model_tag="synthetic_refrag",
                                        base_dir=results / "checkpoints")
    args = meta.get("args", {})
    cfg = {"batch": args.get("device_batch_size", 2), "num_samples": args.get("num_samples", 4),
           "max_new_tokens": args.get("max_new_tokens", 24), "temperature": args.get("temperature", 1.0),
           "seed": args.get("seed", 0), "lr": 1e-4}
    budget = model.config.sequence_len - cfg["max_new_tokens"]
    kb = KnowledgeBase.load(results / "kb" / "synthetic" / args.get("retriever_type", "bm25"))
    items = MD.prompt_items(load_queries(results / "synthetic" / "queries_train.jsonl"),
                            load_precomputed(results / "runs" / "synthetic_refrag" / "retrieval.parquet"),
                            ChunkStore(kb.chunks), "train", args.get("max_doc_length"))
    items, _ = MD.fit_items(tokenizer, [it for it in items if it["hop_doc_ids"] and it["answers"]], budget)
    prompts = [MD.fit_prompt(tokenizer, it, budget)[0] for it in items]
    return model, tokenizer, items, prompts, cfg, meta


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default="results", help="a DAG run's results/ directory")
    p.add_argument("--steps", type=int, default=6, help="reward-phase steps timed per path")
    args = p.parse_args(argv)
    model, tokenizer, items, prompts, cfg, meta = load_run(args.results)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; policy refrag/synthetic_refrag step "
          f"{meta.get('step')}; {len(items)} training questions; a step = {cfg['batch']} questions x "
          f"{cfg['num_samples']} samples, up to {cfg['max_new_tokens']} tokens, temperature {cfg['temperature']}",
          flush=True)
    before = run_steps(model, tokenizer, items, prompts, cfg, args.steps, one_question_at_a_time)
    after = run_steps(model, tokenizer, items, prompts, cfg, args.steps, batched)
    print(f"{'sampling':34s} {'steps':>5s} {'seconds':>8s} {'sampling s':>10s} {'steps/s':>8s} {'speed-up':>8s}")
    for name, (t, ts, _, _) in (("one question at a time (before)", before), ("one batch per step (after)", after)):
        print(f"{name:34s} {args.steps:5d} {t:8.2f} {ts:10.2f} {args.steps / t:8.3f} {before[0] / t:7.2f}x")
    same_tokens = before[2] == after[2]
    n = sum(len(s) for groups in after[2] for g in groups for s in g)
    print(f"sampled tokens identical: {same_tokens} ({n} tokens over {args.steps} steps); losses "
          f"{[round(x, 6) for x in before[3]]} before, {[round(x, 6) for x in after[3]]} after")


if __name__ == "__main__":
    main()
