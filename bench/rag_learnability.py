"""Can a model learn to answer from its documents? A fast probe of a RAFT dataset, without generation.

Trains a fresh GPT on the shards from `python -m nanochat.rag.dataset` (loss on answer tokens, as rag_finetune) and
every --eval_every steps reports, on validation examples with teacher forcing:
  - answer: share of examples whose final-answer tokens (after `Answer:` if quoted, before the citations) are
    all predicted right;
  - all: share with every supervised token right, abstentions included.
The reference to beat is the abstention share: a model that abstains correctly but copies nothing scores
exactly that (validation entities never occur in training, so only copying from the documents answers them).

    python -m bench.rag_learnability --data DATASET_DIR --tokenizer TOK_DIR --steps 1000 --pattern T,T,M,M
    python -m bench.rag_learnability ... --lm_steps 400   # first train on every token of the same sequences

Also a sanity check of the model itself: --induction trains on random-token repeats (copy the first half),
which a 2-layer attention model learns in ~150 steps here.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from nanochat.train import loop as T
from nanochat.cli import ArgumentParser
from nanochat.gpt import GPT, GPTConfig
from nanochat.mamba import building_for


def build_model(pattern: str, n_embd: int, n_head: int, seq_len: int, vocab: int, copy_head: bool = False):
    cfg = GPTConfig(sequence_len=seq_len, vocab_size=vocab, n_layer=len(pattern.split(",")), n_head=n_head,
                    n_kv_head=n_head, n_embd=n_embd, block_pattern=pattern, copy_head=copy_head)
    with building_for("cpu"):
        model = GPT(cfg)
    model.init_weights()
    return model


def fit(model, next_batch, args, evaluate) -> list[dict]:
    """The rag_finetune step (SupervisedLoss, AdamW, warmup + warmdown) with `evaluate(model)` every eval_every."""
    opt = model.setup_optimizer(lr=args.lr)
    loss_model = T.SupervisedLoss(model)
    rows, t0 = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        T.set_lr(opt, T.lr_multiplier(step - 1, args.steps, args.warmup_steps))
        x, y = next_batch(step)
        loss = loss_model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % args.eval_every == 0 or step == args.steps:
            r = {"step": step, "loss": loss.item(), **evaluate(model), "seconds": time.perf_counter() - t0}
            rows.append(r)
            scores = "  ".join(f"{k} {v:.3f}" for k, v in r.items() if k not in ("step", "loss", "seconds"))
            print(f"step {step:>5} loss {r['loss']:.3f} | {scores} | {r['seconds']:.0f}s", flush=True)
    return rows


def answer_span(tokens: list[str]) -> tuple[int, int]:
    """(start, end) of the final answer among the supervised tokens: after `Answer:`, before ` [n]`."""
    text, start = "", 0
    for j, t in enumerate(tokens):
        text += t.replace("Ġ", " ").replace("Ċ", "\n")
        if text.endswith("Answer:"):
            start = j + 1
    end = next((j for j in range(start, len(tokens)) if tokens[j].replace("Ġ", "") == "["), len(tokens))
    if end > start and tokens[end - 1] == "Ġ":
        end -= 1
    return start, end


@torch.no_grad()
def teacher_forced_scores(model, tokenizer, examples, seq_len: int) -> dict:
    model.eval()
    answer = every = abstain = 0
    for x, y in T.eval_batches(examples, 32, seq_len):
        pred = model(x).argmax(-1)
        for b in range(x.size(0)):
            keep = (y[b] != -1).nonzero().flatten().tolist()
            target, got = y[b, keep].tolist(), pred[b, keep].tolist()
            tokens = [tokenizer.id_to_token(t) for t in target]
            s, e = answer_span(tokens)
            answer += target[s:e] == got[s:e]
            every += target == got
            abstain += "provided" in tokenizer.decode(target)
    model.train()
    n = max(len(examples), 1)
    return {"answer": answer / n, "all": every / n, "abstain_share": abstain / n}


def train_probe(args) -> list[dict]:
    from nanochat.rag.shards import load_dataset_shards
    from nanochat.tokenizer import Tokenizer
    tokenizer = Tokenizer.from_directory(args.tokenizer)
    tr, va = load_dataset_shards(args.data, "train"), load_dataset_shards(args.data, "val")
    train = [tr[i] for i in range(len(tr))]
    val = [va[i] for i in range(min(len(va), args.n_val))]
    model = build_model(args.pattern, args.n_embd, args.n_head, args.max_seq_len, tokenizer.get_vocab_size(),
                        args.copy_head)
    answers = T.ShardLoader(train, args.batch, args.max_seq_len, seed=args.seed)
    every_token = T.ShardLoader([(i, np.ones_like(m)) for i, m in train], args.batch, args.max_seq_len,
                                seed=args.seed + 1)
    print(f"{len(train)} train / {len(val)} val examples, {model.num_params() / 1e6:.2f}M params, {args.pattern}; "
          "val 'answer' vs its floor 'abstain_share'")
    return fit(model, lambda step: (every_token if step <= args.lm_steps else answers).next_batch(), args,
               lambda m: teacher_forced_scores(m, tokenizer, val, args.max_seq_len))


def induction_probe(args) -> list[dict]:
    """Random tokens, a separator, the same tokens again: loss on the repeat only."""
    vocab, half = 512, 24
    model = build_model(args.pattern, args.n_embd, args.n_head, 2 * half + 2, vocab, args.copy_head)
    gen = torch.Generator().manual_seed(args.seed)

    def batch(n):
        r = torch.randint(2, vocab, (n, half), generator=gen)
        seq = torch.cat([torch.zeros(n, 1, dtype=torch.long), r, torch.ones(n, 1, dtype=torch.long), r], 1)
        x, y = seq[:, :-1], seq[:, 1:].clone()
        y[:, : half + 1] = -1
        return x, y

    @torch.no_grad()
    def copy_accuracy(m):
        x, y = batch(256)
        keep = y != -1
        return {"copy_accuracy": (m(x).argmax(-1)[keep] == y[keep]).float().mean().item()}

    return fit(model, lambda step: batch(32), args, copy_accuracy)


def main(argv=None):
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="RAFT dataset directory (python -m nanochat.rag.dataset --output)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory the dataset was built with")
    p.add_bool("--induction", False, "run the random-token copy check instead")
    p.add_argument("--pattern", default="T,T,M,M", help="block pattern")
    p.add_bool("--copy_head", False, "pointer-generator output (nanochat.copy_head)")
    p.add_argument("--n_embd", type=int, default=128, help="width")
    p.add_argument("--n_head", type=int, default=4, help="attention heads")
    p.add_argument("--max_seq_len", type=int, default=256, help="tokens per example")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    p.add_argument("--lm_steps", type=int, default=0, help="first steps with loss on every token")
    p.add_argument("--batch", type=int, default=16, help="examples per step")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--warmup_steps", type=int, default=20, help="linear warmup")
    p.add_argument("--eval_every", type=int, default=100, help="steps between validation scores")
    p.add_argument("--n_val", type=int, default=300, help="validation examples scored")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--num_threads", type=int, default=-1, help="CPU threads (-1 = auto)")
    args = p.parse_args(argv)
    T.set_threads(args.num_threads, torch.device("cpu"))
    torch.manual_seed(args.seed)
    if args.induction:
        return induction_probe(args)
    if not (args.data and args.tokenizer):
        p.error("--data and --tokenizer are required (or --induction)")
    return train_probe(args)


if __name__ == "__main__":
    main()
