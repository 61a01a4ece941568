"""Turn a Transformer checkpoint into a Transformer/Mamba hybrid: swap attention layers for Mamba-2 mixers
initialised from the attention weights, then distil from the original model on the knowledge base's text.

    python -m scripts.hybridize --source base --model_tag d20 --block_pattern T,T,M,M --knowledge_base KB --steps 300
    torchrun --standalone --nproc_per_node=8 -m scripts.hybridize --source sft --model_tag d20 --block_pattern ...

Reads <base_dir>/<source>_checkpoints/<model_tag>/ (upstream nanochat's included) and writes the student to
<output_base_dir or base_dir>/<source>_checkpoints/<output_tag>/ (default hybrid-<model_tag>), loadable with
the same --source.
Its meta records the lineage (teacher, pattern, steps, init). Checkpoints every --save_every steps (model,
optimizer, loader cursor and RNG): --resume continues a killed run with the same data order.
metrics.csv: loss = the distillation loss, val_loss = KL(teacher || student) on held-out rows.
"""
from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
import torch

from nanochat.cli import ArgumentParser
from nanochat.hybridize import INITS, TRAINABLE
from nanochat.common import compute_cleanup, compute_init, get_base_dir, print0, setup_logging
from nanochat.train import loop as T
from nanochat.train import progress, resume


def parse_args(argv=None):
    p = ArgumentParser(description="Attention layers -> Mamba-2 (Mamba-in-the-Llama init), then distillation")
    # teacher
    p.add_argument("--source", default="base", help="checkpoint family of the teacher: base | mid | sft (or rag)")
    p.add_argument("--model_tag", default=None, help="teacher tag (default: the largest under the source)")
    p.add_argument("--step", type=int, default=None, help="teacher step (default: last)")
    p.add_argument("--block_pattern", required=True, help="student layers, e.g. T,T,M,M: M = replace that attention layer")
    p.add_argument("--output_tag", default=None, help="student tag (default hybrid-<model_tag>)")
    # student init and objective
    p.add_argument("--init", default="attention", choices=list(INITS),
                   help="replaced layers start from the attention weights (Mamba in the Llama), Mamba's own init with a "
                        "zero output projection (random), or mamba-ssm's init as it is (random_out)")
    p.add_argument("--train", default="all", choices=list(TRAINABLE), help="parameters distillation updates")
    p.add_argument("--hidden_weight", type=float, default=0.0,
                   help="weight of the replaced layers' hidden-state matching (normalised MSE; 0 = KL only)")
    # data
    p.add_argument("--knowledge_base", required=True, help="KB directory: its chunks are the distillation text")
    p.add_argument("--extra_text", nargs="*", default=[], help="general .txt/.jsonl text to mix in")
    p.add_argument("--max_seq_len", type=int, default=-1, help="tokens per row (-1 = the teacher's sequence_len, at most 512)")
    p.add_argument("--val_rows", type=int, default=32, help="held-out rows for the validation KL")
    # optimisation
    p.add_argument("--steps", type=int, default=300, help="distillation steps")
    p.add_argument("--device_batch_size", type=int, default=8, help="rows per step per rank")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    p.add_argument("--warmup_steps", type=int, default=20, help="linear warmup steps")
    p.add_argument("--eval_every", type=int, default=25, help="validation KL every N steps (-1 = only at the end)")
    p.add_argument("--save_every", type=int, default=-1,
                   help="checkpoint every N steps (0 = about four per run; -1 = only at the end)")
    p.add_argument("--keep_last", type=int, default=0, help="keep only the newest N checkpoints (0 = keep all)")
    p.add_argument("--stop_at_step", type=int, default=-1, help="stop after this step as if killed (resume tests)")
    p.add_bool("--resume", False, "continue from the last checkpoint of --output_tag")
    # runtime
    p.add_argument("--device", default="auto", help="cpu | cuda | auto")
    p.add_argument("--num_threads", type=int, default=-1, help="CPU threads per process (-1 = auto)")
    p.add_argument("--seed", type=int, default=0, help="init and data-order seed")
    p.add_argument("--base_dir", default=None, help="default $NANOCHAT_BASE_DIR or ~/.cache/nanochat")
    p.add_argument("--output_base_dir", default=None, help="where the student goes (default: --base_dir)")
    p.add_argument("--run", default="dummy", help="wandb run name (dummy = no wandb)")
    return p.parse_args(argv)


def main(argv=None):
    setup_logging()
    args = parse_args(argv)
    ddp, rank, local_rank, world_size, device = compute_init(args.device)
    T.seed_everything(args.seed)
    n_threads = T.set_threads(args.num_threads, device)
    from nanochat.checkpoint_manager import SOURCES, find_last_step, load_checkpoint, load_model, save_checkpoint
    from nanochat.train.checkpoints import SaveSchedule, prune
    from nanochat.hybridize import DistillLoss, build_student, evaluate_kl, trainable_parameters
    from nanochat.retrieval.kb import KnowledgeBase
    from scripts.base_train import pack_rows
    from scripts.tok_train import extra_texts, kb_texts

    # -----------------------------------------------------------------------------
    # Teacher
    base_dir = get_base_dir(args.base_dir)
    teacher, tokenizer, tmeta = load_model(args.source, device, phase="eval", model_tag=args.model_tag,
                                           step=args.step, base_dir=base_dir)
    teacher_tag = args.model_tag or tmeta.get("model_tag") or "teacher"
    kind = SOURCES.get(args.source, "base")
    out_tag = args.output_tag or f"hybrid-{teacher_tag}"
    out_base = get_base_dir(args.output_base_dir) if args.output_base_dir else base_dir
    ckpt_dir = out_base / f"{kind}_checkpoints" / out_tag

    # -----------------------------------------------------------------------------
    # Data: the KB's chunks (+ extra text) packed into rows, like base_train
    kb = KnowledgeBase.load(args.knowledge_base)
    seq_len = args.max_seq_len if args.max_seq_len > 0 else min(teacher.config.sequence_len, 512)
    texts = list(kb_texts(args.knowledge_base)) + list(extra_texts(args.extra_text))
    streams = tokenizer.encode(texts, prepend=tokenizer.get_bos_token_id())
    rows = pack_rows(streams, seq_len, min_rows=args.device_batch_size * world_size + args.val_rows)
    val_rows, train_rows = rows[:args.val_rows], rows[args.val_rows:]
    print0(f"data: {len(texts)} texts -> {sum(len(s) for s in streams):,} tokens -> {len(train_rows)} train / "
           f"{len(val_rows)} val rows of {seq_len}")

    # -----------------------------------------------------------------------------
    # Student: the attention init calibrates its gates on a few training rows (the same on every rank)
    calibration = torch.tensor(np.stack([ids[:-1] for ids, _ in train_rows[:16]]), dtype=torch.long)
    student, replaced = build_student(teacher, args.block_pattern, init=args.init, seed=args.seed,
                                      calibration=calibration)
    trainable_parameters(student, replaced, args.train)
    n_train = sum(p.numel() for p in student.parameters() if p.requires_grad)
    print0(f"hybridize: {args.source}/{teacher_tag} {','.join(teacher.config.block_pattern)} -> "
           f"{','.join(student.config.block_pattern)} (layers {replaced} from {args.init} init; training "
           f"{args.train}: {n_train / 1e6:.2f}M params) -> {ckpt_dir}; {n_threads} CPU threads")

    # -----------------------------------------------------------------------------
    # Optimizer, resume
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0,
                                  fused=device.type == "cuda")
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    loader = T.ShardLoader(train_rows, args.device_batch_size, seq_len, seed=args.seed, rank=rank, world_size=world_size)
    start = 0
    if args.resume and ckpt_dir.exists() and any(ckpt_dir.glob("model_*.pt")):
        start = find_last_step(str(ckpt_dir))
        model_data, optim_data, _ = load_checkpoint(str(ckpt_dir), start, device, load_optimizer=True)
        student.load_state_dict(model_data)
        optimizer.load_state_dict(optim_data)
        state = resume.load_train_state(ckpt_dir, start, rank)
        loader.cursor = state["cursor"]
        resume.set_rng_state(state["rng"])
        print0(f"resumed from step {start}")
    loss_model = DistillLoss(student, teacher, replaced, args.hidden_weight)
    ddp_model = T.wrap_ddp(loss_model, ddp, device)
    autocast_ctx = T.autocast_for(device)
    log = progress.MetricsLogger(ckpt_dir / "metrics.csv", run_name=args.run, config=vars(args), rank=rank, resume_step=start)
    lineage = {"teacher": {"source": args.source, "model_tag": teacher_tag, "step": tmeta.get("step"),
                           "era": tmeta.get("era", "project"), "block_pattern": list(teacher.config.block_pattern)},
               "block_pattern": list(student.config.block_pattern), "replaced_layers": replaced, "init": args.init,
               "train": args.train, "hidden_weight": args.hidden_weight, "kb_id": kb.kb_id}

    def validation_kl():
        return evaluate_kl(student, teacher, T.eval_batches(val_rows, args.device_batch_size, seq_len, rank, world_size),
                           device, autocast_ctx)

    def save(step, metrics):
        meta = {"step": step, "model_config": asdict(student.config), "model_tag": out_tag, "source": args.source,
                "lineage": {**lineage, "steps": step}, "metrics": metrics, "lr": args.lr,
                "cursor": loader.cursor.to_dict(), "args": {k: v for k, v in vars(args).items() if k != "config_files"}}
        resume.save_train_state(ckpt_dir, step, loader.cursor, rank)
        T.barrier()  # every rank's state is on disk before meta (written last) marks the step complete
        if rank == 0:
            save_checkpoint(str(ckpt_dir), step, student.state_dict(), optimizer.state_dict(), meta, tokenizer=tokenizer)
            prune(ckpt_dir, args.keep_last)
        T.barrier()

    # -----------------------------------------------------------------------------
    # Distillation loop
    if start == 0:
        val = validation_kl()
        print0(f"step 0 | val KL {val:.4f}")
        log.log(step=0, val_loss=val)
    student.train()
    schedule = SaveSchedule(args.save_every, 0, args.steps)  # --save_every 0: about four checkpoints per run
    bar = progress.progress_bar(args.steps, initial=start, desc="hybridize", rank=rank)
    tput, t0, metrics = progress.Throughput(), time.time(), {"train_loss": None, "val_kl": None}
    for step in range(start, args.steps):
        lr = T.set_lr(optimizer, T.lr_multiplier(step, args.steps, args.warmup_steps, warmdown_frac=0.3, final_frac=0.1))
        x, y = loader.next_batch()
        x, y = x.to(device), y.to(device)
        with autocast_ctx:
            loss = ddp_model(x, y != -1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tput.add(x.numel() * world_size)
        done = step + 1
        metrics["train_loss"] = T.all_reduce_mean(loss.item(), device)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['train_loss']:.4f}")
        val = None
        if done == args.steps or (args.eval_every > 0 and done % args.eval_every == 0):
            val = metrics["val_kl"] = validation_kl()
            print0(f"step {done}/{args.steps} | loss {metrics['train_loss']:.4f} | val KL {val:.4f}")
        log.log(step=done, loss=metrics["train_loss"], val_loss=val, lr=lr, tokens_per_s=round(tput.rate()),
                elapsed_s=round(time.time() - t0, 1))
        if done == args.steps or schedule.step_due(done) or done == args.stop_at_step:
            save(done, dict(metrics))
        if done == args.stop_at_step:
            print0(f"--stop_at_step {done}: stopping as if killed")
            break
    bar.close()
    log.finish()
    compute_cleanup()
    return ckpt_dir


if __name__ == "__main__":
    main()
