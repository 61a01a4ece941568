"""Train a small hybrid base model from scratch on the knowledge base's text.

    python -m scripts.base_train --knowledge_base data/my_kb --tokenizer tok/ --model_tag tiny \
        --depth 4 --n_embd 192 --block_pattern T,T,M,M --max_steps 300

For machines without a nanochat checkpoint: next-token prediction over the documents (and
any general text given), so the RAG fine-tune starts from a model that already reads the
KB's language. Saves to <base_dir>/base_checkpoints/<model_tag>/ with the tokenizer.
"""
from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
import torch

from nanochat.cli import ArgumentParser
from nanochat.common import compute_cleanup, compute_init, get_base_dir, print0, setup_logging
from nanochat.train import loop as T
from nanochat.train import progress


def parse_args(argv=None):
    parser = ArgumentParser(description="Small hybrid base model trained from scratch on KB text")
    # data
    parser.add_argument("--knowledge_base", required=True, help="KB directory")
    parser.add_argument("--tokenizer", default=None, help="tokenizer dir (default <base_dir>/tokenizer)")
    parser.add_argument("--extra_text", nargs="*", default=[], help="general .txt/.jsonl text to mix in")
    # model
    parser.add_argument("--model_tag", default="d4", help="checkpoint subdirectory name")
    parser.add_argument("--depth", "--n_layer", dest="depth", type=int, default=4, help="number of blocks")
    parser.add_argument("--n_embd", type=int, default=192, help="model width")
    parser.add_argument("--n_head", type=int, default=4, help="attention heads (n_embd must divide)")
    parser.add_argument("--block_pattern", default="T,T,M,M", help="comma list of T/M, tiled to depth")
    parser.add_bool("--copy_head", True, "pointer-generator output that copies tokens from the context "
                    "(nanochat.copy_head): what lets a small model answer from its documents")
    parser.add_argument("--max_seq_len", type=int, default=512, help="tokens per training row")
    # optimisation
    parser.add_argument("--device_batch_size", type=int, default=8, help="rows per step per rank")
    parser.add_argument("--max_steps", type=int, default=300, help="optimizer steps (-1 = time budget only)")
    parser.add_argument("--time_budget_s", type=float, default=-1, help="stop after this many seconds (-1 = off)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate")
    parser.add_argument("--warmup_steps", type=int, default=20, help="linear warmup steps")
    parser.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay")
    # runtime
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto")
    parser.add_argument("--num_threads", type=int, default=-1, help="CPU threads per process (-1 = auto: 1 when the machine is oversubscribed)")
    parser.add_argument("--seed", type=int, default=0, help="init and data-order seed")
    parser.add_argument("--base_dir", default=None, help="default $NANOCHAT_BASE_DIR or ~/.cache/nanochat")
    return parser.parse_args(argv)


def pack_rows(token_streams, row_len: int, min_rows: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """Concatenate documents (each starting with BOS) and cut into rows of row_len+1 tokens, all supervised.

    A corpus too small for min_rows rows is repeated, so a handful of documents still fills a batch.
    """
    flat = np.concatenate([np.asarray(s, dtype=np.int32) for s in token_streams])
    if len(flat) < min_rows * (row_len + 1):  # a tiny corpus (the guide's 10-document example): repeat it
        flat = np.tile(flat, -(-min_rows * (row_len + 1) // len(flat)))
    n_rows = max(1, len(flat) // (row_len + 1))
    rows = flat[: n_rows * (row_len + 1)].reshape(n_rows, row_len + 1)
    return [(r, np.ones_like(r, dtype=np.uint8)) for r in rows]


def main(argv=None):
    setup_logging()
    args = parse_args(argv)
    ddp, rank, local_rank, world_size, device = compute_init(args.device)
    T.seed_everything(args.seed)
    n_threads = T.set_threads(args.num_threads, device)
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.mamba import building_for
    from nanochat.tokenizer import Tokenizer
    from nanochat.checkpoint_manager import save_checkpoint
    from nanochat.retrieval.kb import KnowledgeBase
    from scripts.tok_train import extra_texts, kb_texts

    # --- data: the KB's chunks (+ extra text), tokenised and packed
    base_dir = get_base_dir(args.base_dir)
    tokenizer = Tokenizer.from_directory(str(args.tokenizer or base_dir / "tokenizer"))
    kb = KnowledgeBase.load(args.knowledge_base)
    bos = tokenizer.get_bos_token_id()
    texts = list(kb_texts(args.knowledge_base)) + list(extra_texts(args.extra_text))
    streams = tokenizer.encode(texts, prepend=bos)
    rows = pack_rows(streams, args.max_seq_len, min_rows=args.device_batch_size * world_size)
    n_val = max(1, len(rows) // 20) if len(rows) >= 20 else 0
    train_rows, val_rows = rows[n_val:], rows[:n_val]
    print0(f"base_train: {len(texts)} texts -> {sum(len(s) for s in streams):,} tokens -> "
           f"{len(train_rows)} train rows / {len(val_rows)} val rows of {args.max_seq_len}")

    # --- model
    pattern = [p.strip() for p in args.block_pattern.split(",") if p.strip()]
    pattern = (pattern * args.depth)[: args.depth]
    config = GPTConfig(sequence_len=args.max_seq_len, vocab_size=tokenizer.get_vocab_size(), n_layer=args.depth,
                       n_head=args.n_head, n_kv_head=args.n_head, n_embd=args.n_embd, block_pattern=",".join(pattern),
                       copy_head=args.copy_head)
    with building_for(device), torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()
    n_params = sum(p.numel() for p in model.parameters())
    print0(f"model: {n_params / 1e6:.2f}M params, pattern {','.join(pattern)}, width {args.n_embd}, {n_threads} CPU threads")
    optimizer = model.setup_optimizer(lr=args.lr, weight_decay=args.weight_decay)
    ddp_model = T.wrap_ddp(model, ddp, device)
    autocast_ctx = T.autocast_for(device)

    # --- loop
    loader = T.ShardLoader(train_rows, args.device_batch_size, args.max_seq_len, seed=args.seed,
                           rank=rank, world_size=world_size)
    total = args.max_steps if args.max_steps > 0 else 10**9
    ckpt_dir = base_dir / "base_checkpoints" / args.model_tag
    log = progress.MetricsLogger(ckpt_dir / "metrics.csv", rank=rank)
    bar = progress.progress_bar(total if args.max_steps > 0 else None, desc="base_train", rank=rank)
    t_start, tput, step, loss_val = time.time(), progress.Throughput(), 0, float("nan")
    while step < total:
        if args.time_budget_s > 0 and time.time() - t_start > args.time_budget_s:
            print0(f"time budget {args.time_budget_s}s reached at step {step}")
            break
        lr = T.set_lr(optimizer, T.lr_multiplier(step, total if args.max_steps > 0 else step + 1000,
                                                   args.warmup_steps, warmdown_frac=0.3, final_frac=0.1))
        x, y = loader.next_batch()
        x, y = x.to(device), y.to(device)
        with autocast_ctx:
            loss = ddp_model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tput.add(x.numel() * world_size)
        loss_val = loss.item()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_val:.3f}")
        if step % 25 == 0 or step == total:
            log.log(step=step, loss=loss_val, lr=lr, tokens_per_s=round(tput.rate()), elapsed_s=round(time.time() - t_start, 1))
    bar.close()
    val_loss = T.evaluate_loss(model, T.eval_batches(val_rows, args.device_batch_size, args.max_seq_len, rank, world_size),
                               device, autocast_ctx) if val_rows else float("nan")
    print0(f"base_train: done {step} steps in {time.time() - t_start:.0f}s, loss {loss_val:.3f}, val_loss {val_loss:.3f}")
    log.log(step=step, loss=loss_val, val_loss=val_loss)
    if rank == 0:
        meta = {"step": step, "model_tag": args.model_tag, "model_config": asdict(config), "train_loss": loss_val, "val_loss": val_loss,
                "lr": args.lr, "kb_id": kb.kb_id, "args": {k: v for k, v in vars(args).items()}}
        save_checkpoint(str(ckpt_dir), step, model.state_dict(), None, meta, tokenizer=tokenizer)
        print0(f"saved {ckpt_dir}")
    log.finish()
    compute_cleanup()
    return ckpt_dir


if __name__ == "__main__":
    main()
