"""RAG fine-tuning of a Mamba or hybrid nanochat model on retrieval-augmented conversations.

    python -m scripts.rag_finetune --knowledge_base data/my_kb --source mid --retriever_type dense --top_k 5
    torchrun --standalone --nproc_per_node=8 -m scripts.rag_finetune configs/rag_hybrid_d20.py --knowledge_base data/my_kb

Retrieval is never run inside the loop: examples come pre-tokenised from nanochat.rag.raft shards
(--dataset), or this script precomputes retrieval for the queries once and builds the shards
itself. Loss is on assistant tokens only. Checkpoints go to <base_dir>/rag_checkpoints/<tag>/
with a metrics CSV beside them; --resume continues a killed run with the same data order.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path


from nanochat.cli import ArgumentParser
from nanochat.common import (atomic_write_json, compute_cleanup, compute_init, get_base_dir, print0,
                             setup_logging, sha256_file)
from nanochat.train import data as train_data
from nanochat.train import loop as T
from nanochat.train import progress
from nanochat.train import resume

def main(argv=None):
    # -----------------------------------------------------------------------------
    # CLI (the guide's flags first; every help gives units and sentinels)
    parser = ArgumentParser(description="RAG fine-tuning (Mamba / hybrid models)")
    # knowledge base and retrieval
    parser.add_argument("--knowledge_base", required=True, help="KB directory (must exist)")
    parser.add_argument("--retriever_type", default="simple", choices=["simple", "bm25", "dense", "hybrid"], help="retriever used to precompute documents")
    parser.add_argument("--top_k", type=int, default=5, help="documents per query in the retrieval message (more for Mamba, up to 10)")
    parser.add_argument("--max_doc_length", type=int, default=300, help="words kept per document (truncation; -1 = no limit)")
    parser.add_argument("--p_gold", type=float, default=0.8, help="RAFT: share of examples whose documents include the gold one")
    # data
    parser.add_argument("--dataset", default=None, help="pre-tokenised shards from nanochat.rag.raft (skips the build below)")
    parser.add_argument("--queries_train", default=None, help="training queries (default: queries_train.jsonl beside the KB, else doc questions)")
    parser.add_argument("--queries_val", default=None, help="validation queries (default: queries_val.jsonl beside the KB)")
    parser.add_argument("--base_tasks", default=None, help="general chat to mix in: SmolTalk (default; only if cached locally), none, or JSONL files")
    parser.add_argument("--task_samples", type=int, default=-1, help="general conversations mixed in (-1 = one per 4 RAG examples)")
    # model source and output
    parser.add_argument("--source", default="mid", choices=["base", "mid"], help="checkpoint family to start from")
    parser.add_argument("--model_tag", default=None, help="source checkpoint tag (default: largest model); also the output tag")
    parser.add_argument("--output_tag", default=None, help="output tag under rag_checkpoints/ (default: --model_tag or the source's tag)")
    parser.add_argument("--step", type=int, default=None, help="source checkpoint step (default: last)")
    parser.add_argument("--base_dir", default=None, help="checkpoints root (default $NANOCHAT_BASE_DIR or ~/.cache/nanochat)")
    # optimisation
    parser.add_argument("--num_epochs", type=int, default=1, help="passes over the training examples")
    parser.add_argument("--max_steps", type=int, default=-1, help="cap on optimizer steps (-1 = num_epochs worth)")
    parser.add_argument("--device_batch_size", type=int, default=4, help="examples per rank per micro-step")
    parser.add_argument("--grad_accum_steps", type=int, default=1, help="micro-steps per optimizer step")
    parser.add_argument("--max_seq_len", type=int, default=2048, help="tokens per example (longer ones are cut)")
    parser.add_argument("--lr", type=float, default=None, help="base learning rate (default: the source's pretraining lr, else 1e-3)")
    parser.add_argument("--init_lr_frac", type=float, default=1.0, help="peak lr = lr * init_lr_frac (0.01 = careful fine-tuning)")
    parser.add_argument("--warmup_steps", type=int, default=0, help="linear warmup steps")
    parser.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay")
    # evaluation, checkpoints, logging
    parser.add_argument("--eval_every", type=int, default=100, help="validation loss every N steps (-1 = only at the end)")
    parser.add_argument("--eval_examples", type=int, default=256, help="validation examples per val-loss measurement (-1 = all)")
    parser.add_argument("--save_every", type=int, default=-1, help="checkpoint every N steps (-1 = only at the end)")
    parser.add_argument("--stop_at_step", type=int, default=-1, help="stop after saving this step, as if killed (time-sliced jobs, resume tests; -1 = off)")
    parser.add_bool("--resume", default=False, help="continue from the last checkpoint of the output tag")
    parser.add_argument("--run", default="dummy", help="wandb run name (wandb used only when WANDB_RUN is set)")
    parser.add_argument("--device", default="auto", help="cpu | cuda | auto")
    parser.add_argument("--num_threads", type=int, default=-1, help="CPU threads per process (-1 = auto: 1 when the machine is oversubscribed)")
    parser.add_argument("--seed", type=int, default=0, help="data order and RAFT sampling seed")
    args = parser.parse_args(argv)
    setup_logging()

    # -----------------------------------------------------------------------------
    # Compute, model, knowledge base
    ddp, rank, local_rank, world_size, device = compute_init(args.device)
    T.seed_everything(args.seed)
    n_threads = T.set_threads(args.num_threads, device)
    from nanochat.checkpoint_manager import find_last_step, load_checkpoint, load_model, save_checkpoint
    from nanochat.gpt import require_mamba
    from nanochat.retrieval.kb import KnowledgeBase

    kb = KnowledgeBase.load(args.knowledge_base)  # "Knowledge base not found: ..." when missing
    base_dir = get_base_dir(args.base_dir)
    try:
        model, tokenizer, source_meta = load_model(args.source, device, phase="train", model_tag=args.model_tag,
                                                   step=args.step, base_dir=base_dir)
    except FileNotFoundError as e:  # a fresh machine has no nanochat checkpoint yet: say how to make one
        raise SystemExit(f"error: {e}\nNo '{args.source}' model to fine-tune. Train a small hybrid base model "
                         f"from your documents first:\n  python -m scripts.tok_train --knowledge_base "
                         f"{args.knowledge_base}\n  python -m scripts.base_train configs/base_tiny_cpu.py "
                         f"--knowledge_base {args.knowledge_base}\nthen run this command with --source base.") from None
    require_mamba(model.config)  # "RAG requires Mamba or hybrid models" for pure transformers
    out_tag = args.output_tag or args.model_tag or source_meta.get("model_tag") or "rag"
    ckpt_dir = base_dir / "rag_checkpoints" / out_tag
    print0(f"source: {args.source} ({source_meta.get('model_tag', args.model_tag)}, step {source_meta.get('step')}) "
           f"-> {ckpt_dir}; pattern {model.config.block_pattern}; {n_threads} CPU threads")

    # -----------------------------------------------------------------------------
    # Data: shards from nanochat.rag.raft (built here once, on rank 0, when --dataset is not given)
    dataset_dir = Path(args.dataset) if args.dataset else ckpt_dir / "data" / "dataset"
    if not args.dataset:
        if rank == 0 and not (args.resume and (dataset_dir / "manifest.json").exists()):
            train_data.build_rag_dataset(kb.path, args, dataset_dir, ckpt_dir / "data", tokenizer)
        T.barrier()
    from nanochat.rag.shards import load_dataset_shards
    train_examples = list(load_dataset_shards(str(dataset_dir), "train"))
    val_examples = list(load_dataset_shards(str(dataset_dir), "val"))
    if args.eval_examples > 0:  # a fixed subset: comparable across steps, cheap enough to run often
        val_examples = val_examples[: args.eval_examples]
    task_examples = train_data.load_base_tasks(args.base_tasks, args.task_samples, len(train_examples), tokenizer,
                                      args.max_seq_len, args.seed)
    train_examples += task_examples
    data_hash = sha256_file(dataset_dir / "manifest.json")
    manifest = json.loads((dataset_dir / "manifest.json").read_text(encoding="utf-8"))
    for key in ("top_k", "max_doc_length"):  # the shards decide what the model saw; eval and chat read these
        if key in manifest and manifest[key] != getattr(args, key):
            print0(f"note: --{key} {getattr(args, key)} differs from the dataset's {manifest[key]}; recording {manifest[key]}")
            setattr(args, key, manifest[key])
    print0(f"data: {len(train_examples)} train ({len(task_examples)} from base tasks) / {len(val_examples)} val examples "
           f"from {dataset_dir}")

    # -----------------------------------------------------------------------------
    # Optimizer, schedule, resume
    lr = args.lr or source_meta.get("lr") or 1e-3
    optimizer = model.setup_optimizer(lr=lr * args.init_lr_frac, weight_decay=args.weight_decay)
    loader = T.ShardLoader(train_examples, args.device_batch_size, args.max_seq_len, seed=args.seed, rank=rank,
                           world_size=world_size)
    steps_per_epoch = max(1, loader.steps_per_epoch // args.grad_accum_steps)
    num_steps = args.num_epochs * steps_per_epoch
    if args.max_steps > 0:
        num_steps = min(num_steps, args.max_steps) if args.num_epochs > 0 else args.max_steps
    start_step = 0
    if args.resume and ckpt_dir.exists() and any(ckpt_dir.glob("model_*.pt")):
        start_step = find_last_step(str(ckpt_dir))
        model_data, optim_data, _ = load_checkpoint(str(ckpt_dir), start_step, device, load_optimizer=True)
        model.load_state_dict(model_data)
        optimizer.load_state_dict(optim_data)
        state = resume.load_train_state(ckpt_dir, start_step, rank)
        loader.cursor = state["cursor"]
        resume.set_rng_state(state["rng"])
        print0(f"resumed from step {start_step} (epoch {loader.cursor.epoch}, example {loader.cursor.position})")
    elif args.resume:
        print0(f"--resume: no checkpoint in {ckpt_dir} yet; starting from step 0")
    loss_model = T.SupervisedLoss(model)  # lm_head only where the answer is
    ddp_model = T.wrap_ddp(loss_model, ddp, device)
    autocast_ctx = T.autocast_for(device)
    log = progress.MetricsLogger(ckpt_dir / "metrics.csv", run_name=args.run, config=vars(args), rank=rank,
                          resume_step=start_step)


    def validation_loss() -> float:
        model.eval()
        v = T.evaluate_loss(loss_model, T.eval_batches(val_examples, args.device_batch_size, args.max_seq_len, rank, world_size),
                            device, autocast_ctx)
        model.train()
        return v


    def save(step: int, metrics: dict) -> None:
        meta = {"step": step, "model_config": asdict(model.config), "model_tag": out_tag, "source": args.source,
                "source_tag": source_meta.get("model_tag", args.model_tag), "source_step": source_meta.get("step"),
                "kb_id": kb.kb_id, "kb_path": str(kb.path), "data_manifest_sha256": data_hash, "lr": lr,
                "cursor": loader.cursor.to_dict(), "metrics": metrics,
                "args": {k: v for k, v in vars(args).items() if k != "config_files"}}
        if rank == 0:
            save_checkpoint(str(ckpt_dir), step, model.state_dict(), optimizer.state_dict(), meta, tokenizer=tokenizer)
        resume.save_train_state(ckpt_dir, step, loader.cursor, rank)
        T.barrier()


    # -----------------------------------------------------------------------------
    # Training loop
    print0(f"training {num_steps} steps ({steps_per_epoch}/epoch x {args.num_epochs}), batch "
           f"{args.device_batch_size}x{args.grad_accum_steps}x{world_size}, peak lr {lr * args.init_lr_frac:.2e}")
    model.train()
    bar = progress.progress_bar(num_steps, initial=start_step, desc="rag_finetune", rank=rank)
    tput, t0 = progress.Throughput(), time.time()
    metrics = {"train_loss": None, "val_loss": None}
    for step in range(start_step, num_steps):
        lr_now = T.set_lr(optimizer, T.lr_multiplier(step, num_steps, args.warmup_steps, warmdown_frac=1.0))
        loss_sum = 0.0
        for micro in range(args.grad_accum_steps):
            x, y = loader.next_batch()
            x, y = x.to(device), y.to(device)  # (B, T)
            if ddp:  # sync gradients only on the last micro-step
                ddp_model.require_backward_grad_sync = micro == args.grad_accum_steps - 1
            with autocast_ctx:
                loss = ddp_model(x, y) / args.grad_accum_steps
            loss.backward()
            loss_sum += loss.item()
            tput.add(x.numel() * world_size)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        train_loss = T.all_reduce_mean(loss_sum, device)
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{train_loss:.3f}")
        val_loss = None
        if done == num_steps or (args.eval_every > 0 and done % args.eval_every == 0):
            val_loss = validation_loss()
            print0(f"step {done}/{num_steps} | train loss {train_loss:.4f} | val loss {val_loss:.4f}")
            metrics["val_loss"] = val_loss
        metrics["train_loss"] = train_loss
        log.log(step=done, loss=round(train_loss, 6), val_loss=val_loss, lr=lr_now, tokens_per_s=round(tput.rate()),
                elapsed_s=round(time.time() - t0, 2))
        if done == num_steps or (args.save_every > 0 and done % args.save_every == 0) or done == args.stop_at_step:
            save(done, dict(metrics))
        if done == args.stop_at_step and done < num_steps:
            print0(f"--stop_at_step {done}: stopping without the done marker; continue with --resume")
            bar.close()
            log.finish()
            compute_cleanup()
            return ckpt_dir
    bar.close()

    # -----------------------------------------------------------------------------
    # Done marker (the workflow's declared output)
    if rank == 0:
        atomic_write_json(ckpt_dir / "done.json", {"step": num_steps, "model_tag": out_tag, "kb_id": kb.kb_id,
                                                   "metrics": metrics, "data_manifest_sha256": data_hash,
                                                   "elapsed_s": round(time.time() - t0, 1)})
        print0(f"rag_finetune: done, {num_steps} steps, val loss {metrics['val_loss']}, checkpoint {ckpt_dir}")
    log.finish()
    compute_cleanup()
    return ckpt_dir


if __name__ == "__main__":
    main()
