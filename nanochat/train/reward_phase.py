"""REFRAG's reward phase, the shape of nanochat's chat_rl: on-policy REINFORCE with a group-mean baseline.

For a prompt, sample a group of answers at temperature > 0, score each with nanochat.rag.rewards,
advantage = reward - group mean, loss = -mean over sampled tokens of advantage * log p(token).
Prompt and retrieved tokens never carry loss.
"""
from __future__ import annotations

import torch

from nanochat.rag.conversation import message_documents
from nanochat.common import CsvLog
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
