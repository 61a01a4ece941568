"""REFRAG's reward phase, the shape of nanochat's chat_rl: on-policy REINFORCE with a group-mean baseline.

For a prompt, sample a group of answers at temperature > 0, score each with nanochat.rag.rewards,
advantage = reward - group mean, loss = -mean over sampled tokens of advantage * log p(token).
Prompt and retrieved tokens never carry loss.
"""
from __future__ import annotations

import time

import torch

from nanochat.common import CsvLog, print0
from nanochat.rag.conversation import message_documents
from nanochat.rag.rewards import COMPONENTS, compute_reward


@torch.no_grad()
def sample_group(engine, prompt: list[int], num_samples: int, max_tokens: int, temperature: float = 1.0,
                 top_k: int | None = 50, seed: int = 0) -> list[list[int]]:
    """num_samples answers to one prompt; each is its generated ids, ending with the stop token if one came."""
    stop = engine.stop_tokens()
    out = [[] for _ in range(num_samples)]
    done = [False] * num_samples
    for column, _ in engine.generate(prompt, num_samples=num_samples, max_tokens=max_tokens,
                                     temperature=temperature, top_k=top_k, seed=seed):
        for i, tok in enumerate(column):
            if not done[i]:
                out[i].append(tok)
                done[i] = tok in stop
    return out

def group_advantages(rewards) -> torch.Tensor:
    """Reward minus the group mean (chat_rl's baseline; no std scaling, so equal rewards give zero)."""
    r = torch.as_tensor(rewards, dtype=torch.float32)
    return r - r.mean()

def policy_gradient_batch(prompt: list[int], samples: list[list[int]], pad_id: int = 0):
    """(inputs (N, T), targets (N, T)) with targets = -1 on prompt positions and padding: only sampled tokens count."""
    seqs = [prompt + s for s in samples]
    T = max(len(s) for s in seqs) - 1
    inputs = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    targets = torch.full((len(seqs), T), -1, dtype=torch.long)
    for i, s in enumerate(seqs):
        x = torch.tensor(s, dtype=torch.long)
        inputs[i, :len(s) - 1] = x[:-1]
        targets[i, len(prompt) - 1:len(s) - 1] = x[len(prompt):]
    return inputs, targets

def policy_gradient_loss(model, inputs: torch.Tensor, targets: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """-(sum over sampled tokens of advantage * log p) / number of sampled tokens."""
    nll = model(inputs, targets, loss_reduction="none").view_as(inputs)  # (N, T); 0 where target == -1
    valid = (targets >= 0).float()
    objective = ((-nll) * valid * advantages.to(nll.dtype).unsqueeze(1)).sum()
    return -objective / valid.sum().clamp(min=1.0)

def score_samples(tokenizer, samples: list[list[int]], item: dict) -> list[dict]:
    """Decode each sample (stop token dropped) and score it with nanochat.rag.rewards."""
    stop = {tokenizer.encode_special("<|assistant_end|>"), tokenizer.get_bos_token_id()}
    docs = message_documents(item["message"])
    out = []
    for s in samples:
        text = tokenizer.decode([t for t in s if t not in stop]).strip()
        out.append({"text": text, **compute_reward(text, item["answers"], docs, item.get("doc_ids"))})
    return out

# rewards.csv: one row per step (warm-up and reward phase), every reward component from the registry
REWARD_FIELDS = ["step", "phase", "loss", *COMPONENTS, "heldout_em", "heldout_f1", "heldout_reward", "elapsed_s"]


def reward_log(path) -> CsvLog:
    """The run's rewards.csv; columns follow nanochat.rag.rewards.COMPONENTS."""
    return CsvLog(path, REWARD_FIELDS)


def run_reward_phase(run, items: list[dict], prompt_budget: int, heldout_em, reward_log: CsvLog) -> dict:
    """Steps num_steps+1..total_steps of a nanochat.train.session.FineTune: per rank, device_batch_size questions
    a step, num_samples answers each (sampling seeded by step, so a resumed run samples what the killed one
    would have), the policy-gradient loss; a rewards.csv row and console line per step, held-out EM every
    eval_every/4 steps and at the end. Returns the last row."""
    from nanochat.engine import Engine
    from nanochat.rag import multihop_data as MD
    from nanochat.train import loop as T
    from nanochat.train import progress
    args, model, tokenizer, device = run.args, run.model, run.tokenizer, run.device
    rl_steps = run.total_steps - run.num_steps
    if rl_steps <= 0:
        return {}
    if not items:
        raise SystemExit("--use_rewards true needs multi-hop retrieval for the training questions "
                         "(pass --retrieval TABLE with a 'train' split, or let this script build it)")
    engine = Engine(model, tokenizer)
    rl_lr = run.lr * args.init_lr_frac * args.rl_lr_frac
    for g in run.optimizer.param_groups:
        g["lr"] = rl_lr
    pad = tokenizer.get_bos_token_id()
    rl_start = max(0, run.start_step - run.num_steps)
    print0(f"reward phase: {rl_steps} steps x {args.device_batch_size} questions x {args.num_samples} "
           f"samples x {run.world_size} ranks, lr {rl_lr:.2e}, temperature {args.temperature}")
    bar = progress.progress_bar(rl_steps, initial=rl_start, desc="refrag rewards", rank=run.rank)
    row = {}
    try:
        for step in range(rl_start, rl_steps):
            comps: dict[str, list] = {}
            loss_sum = 0.0
            for b in range(args.device_batch_size):
                i = ((step * args.device_batch_size + b) * run.world_size + run.rank) % len(items)
                item = items[i]
                prompt, _ = MD.fit_prompt(tokenizer, item, prompt_budget)  # fits: fit_items kept only such items
                model.eval()
                samples = sample_group(engine, prompt, args.num_samples, args.max_new_tokens, args.temperature,
                                       seed=args.seed * 100003 + step * 1009 + b * 31 + run.rank)
                model.train()
                scored = score_samples(tokenizer, samples, item)
                for s in scored:
                    for k in COMPONENTS:
                        comps.setdefault(k, []).append(s[k])
                adv = group_advantages([s["reward"] for s in scored]).to(device)
                inputs, targets = policy_gradient_batch(prompt, samples, pad)
                if run.ddp:
                    run.ddp_model.require_backward_grad_sync = b == args.device_batch_size - 1
                with run.autocast_ctx:
                    loss = policy_gradient_loss(run.ddp_model, inputs.to(device), targets.to(device), adv)
                (loss / args.device_batch_size).backward()
                loss_sum += loss.item() / args.device_batch_size
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
            rl_done = step + 1
            done = run.num_steps + rl_done
            row = {k: round(T.all_reduce_mean(float(sum(v) / len(v)), device), 4) for k, v in comps.items()}
            row.update(step=done, phase="reward", loss=round(T.all_reduce_mean(loss_sum, device), 6))
            if rl_done == rl_steps or (args.eval_every > 0 and rl_done % max(1, args.eval_every // 4) == 0):
                row.update(heldout_em() if run.rank == 0 else {})
            row["elapsed_s"] = round(time.time() - run.t0, 2)
            bar.update(1)
            if run.rank == 0:
                reward_log.append(**row)
                print0(" | ".join(f"{k} {row[k]}" for k in REWARD_FIELDS
                                  if k in row and k not in ("phase", "elapsed_s")))
            run.after_step(done, run.total_steps, final_reward=row.get("reward"), heldout_em=row.get("heldout_em"))
    finally:
        bar.close()
    return row
