"""One fine-tuning run, the part scripts.rag_finetune and scripts.refrag_finetune tell alike.

    run = FineTune(args, mode="rag")        # compute, KB, source model, <base_dir>/<mode>_checkpoints/<tag>/
    with run:                                # one writer per directory; SIGTERM/SIGUSR1 -> checkpoint, then exit
        if run.finished(): ...               # --resume of a finished run does nothing
        train, val = run.load_data(run.dataset_dir(build))
        run.setup_training(train)            # optimizer, loader, steps, checkpoint schedule
        run.resume()                         # newest complete checkpoint: model, optimizer, cursor, RNG
        run.supervised(loss_model, val)      # the step loop (validation, logging, periodic checkpoints)
        run.finish()                         # done.json, the workflow's declared output, last

A stop (--stop_at_step, or a signal) leaves the loop as nanochat.train.checkpoints.Interrupted after its
checkpoint is written; leaving the `with` block turns it into a return (stop_at_step) or exit status 128+signal.
"""
from __future__ import annotations

import json
import signal
import time
from dataclasses import asdict
from pathlib import Path

from nanochat.common import (
    atomic_write_json,
    compute_cleanup,
    compute_init,
    get_base_dir,
    print0,
    setup_logging,
    sha256_file,
)
from nanochat.train import checkpoints as C
from nanochat.train import loop as T
from nanochat.train import progress, resume
from nanochat.train.lifeline import follow_parent, launched_by_torchrun


def load_source_model(args, device, base_dir):
    """The checkpoint to fine-tune; when there is none, the commands that make or bring one (no_source_help)."""
    from nanochat.checkpoint_manager import load_model
    from nanochat.gpt import require_mamba
    try:
        model, tokenizer, meta = load_model(args.source, device, phase="train", model_tag=args.model_tag,
                                            step=args.step, base_dir=base_dir)
    except FileNotFoundError as e:
        raise SystemExit(no_source_help(args, base_dir, e)) from None
    require_mamba(model.config)  # "RAG requires Mamba or hybrid models", naming scripts.hybridize
    return model, tokenizer, meta


def no_source_help(args, base_dir, error) -> str:
    """The error, then what to do: another --source that has checkpoints here, an upstream nanochat checkpoint put
    in place (and made a hybrid), or a small hybrid base model trained from the documents."""
    from nanochat.checkpoint_manager import SOURCES, checkpoints_root
    root = checkpoints_root(args.source, base_dir)
    if root.is_dir() and any(root.iterdir()) and args.model_tag is not None:
        return f"error: {error}"  # the family exists: a wrong tag or step, and the message lists what is there
    family, present = SOURCES[args.source], {}
    for name, other in SOURCES.items():
        d = checkpoints_root(name, base_dir)
        if other != family and d.is_dir() and other not in {SOURCES[n] for n in present}:
            tags = sorted(t.name for t in d.iterdir() if t.is_dir() and any(t.glob("meta_*.json")))
            if tags:
                present[name] = tags
    kb = args.knowledge_base
    lines = [f"error: {error}", f"No '{args.source}' model to fine-tune in {base_dir}."]
    if present:
        lines.append("Checkpoints that are there: " + "; ".join(f"--source {n} (tags {', '.join(t)})"
                                                               for n, t in present.items()))
    lines += [
        "Bring your own nanochat model: put it in upstream's layout under the base dir ($NANOCHAT_BASE_DIR or "
        f"--base_dir),\n  {base_dir}/{family}_checkpoints/<tag>/model_<step>.pt + meta_<step>.json and "
        f"{base_dir}/tokenizer/tokenizer.pkl + token_bytes.pt;",
        "  an all-attention model becomes a hybrid (RAG needs Mamba layers) by distillation:",
        f"  python -m scripts.hybridize --source {args.source} --model_tag <tag> --knowledge_base {kb} "
        f"--block_pattern T,T,M,M  (one letter per layer)",
        f"  then run this command with --source {args.source} --model_tag hybrid-<tag>.",
        "Or train a small hybrid base model from your documents:",
        f"  python -m scripts.tok_train --knowledge_base {kb}",
        f"  python -m scripts.base_train configs/base_tiny_cpu.py --knowledge_base {kb}",
        "  then run this command with --source base.",
    ]
    return "\n".join(lines)


def extend_context(model, max_seq_len: int) -> None:
    """Fine-tuning longer than the source's context extends it (RoPE tables cover 10x; Mamba has no limit); the
    new length is saved with the checkpoint, so evaluation and chat allow it too."""
    if max_seq_len <= model.config.sequence_len:
        return
    if max_seq_len > model.rotary_seq_len:
        raise SystemExit(f"--max_seq_len {max_seq_len} exceeds what the source model's rotary tables cover "
                         f"({model.rotary_seq_len} tokens)")
    print0(f"context extended from {model.config.sequence_len} to --max_seq_len {max_seq_len} tokens")
    model.config.sequence_len = max_seq_len


class FineTune:
    """State and shared steps of one fine-tuning run (see the module docstring for the story)."""

    def __init__(self, args, mode: str):
        self.args, self.mode = args, mode
        setup_logging()
        if launched_by_torchrun():
            follow_parent()  # no orphans: stop (after a checkpoint) when the torchrun agent dies
        self.ddp, self.rank, _, self.world_size, self.device = compute_init(args.device)
        T.seed_everything(args.seed)
        n_threads = T.set_threads(args.num_threads, self.device)
        from nanochat.retrieval.kb import KnowledgeBase
        self.kb = KnowledgeBase.load(args.knowledge_base)  # "Knowledge base not found: ..." when missing
        self.base_dir = get_base_dir(args.base_dir)
        self.model, self.tokenizer, self.source_meta = load_source_model(args, self.device, self.base_dir)
        extend_context(self.model, args.max_seq_len)
        self.out_tag = args.output_tag or args.model_tag or self.source_meta.get("model_tag") or mode
        self.ckpt_dir = self.base_dir / f"{mode}_checkpoints" / self.out_tag
        self.autocast_ctx = T.autocast_for(self.device)
        self.metrics = {"train_loss": None, "val_loss": None}
        self.meta_extra: dict = {}  # mode-specific fields of every checkpoint's meta
        self.start_step = self.num_steps = self.total_steps = self.warmup_steps = 0
        self.ddp_model = self.log = self.data_hash = None
        self.stop = C.StopSignals()
        self.lock = C.TrainerLock(self.ckpt_dir) if self.rank == 0 else None
        self.t0 = time.time()
        print0(f"source: {args.source} ({self.source_meta.get('model_tag', args.model_tag)}, step "
               f"{self.source_meta.get('step')}) -> {self.ckpt_dir}; pattern {self.model.config.block_pattern}; "
               f"{n_threads} CPU threads")

    # -------------------------------------------------------------------------
    # the run's lifetime: one writer, signals, clean exits

    def __enter__(self):
        if self.lock is not None:
            try:
                self.lock.acquire()
            except C.CheckpointDirLocked as e:
                compute_cleanup()
                raise SystemExit(f"error: {e}") from None
        self.stop.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.stop.__exit__()
        if self.log is not None:
            self.log.finish()
        if self.lock is not None:
            self.lock.release()
        compute_cleanup()
        if not isinstance(exc, C.Interrupted):
            return False
        if exc.signum is None:
            print0(f"--stop_at_step {exc.step}: stopping without the done marker; continue with --resume")
            return True
        print0(f"stopped by {signal.Signals(exc.signum).name} after step {exc.step} of {self.total_steps}: "
               f"checkpoint in {self.ckpt_dir}; run the same command with --resume true to continue")
        raise SystemExit(128 + exc.signum) from None

    def finished(self) -> bool:
        """--resume of a run whose done.json exists: nothing to do."""
        done = self.ckpt_dir / "done.json"
        if self.args.resume and done.is_file():
            print0(f"--resume: {done} exists; nothing to do")
            return True
        return False

    # -------------------------------------------------------------------------
    # data

    def dataset_dir(self, build) -> Path:
        """--dataset as given; else `build(dir)` writes shards into <ckpt>/data/dataset once, on rank 0 (a resume
        reuses them)."""
        if self.args.dataset:
            return Path(self.args.dataset)
        d = self.ckpt_dir / "data" / "dataset"
        if self.rank == 0 and not (self.args.resume and (d / "manifest.json").is_file()):
            (self.ckpt_dir / "data").mkdir(parents=True, exist_ok=True)
            build(d)
        T.barrier()
        return d

    def load_data(self, dataset_dir) -> tuple[list, list]:
        """(train, val) examples from the shards, with general chat mixed into train. The shards decide what the
        model saw, so where their manifest records top_k or max_doc_length, that value is the run's."""
        from nanochat.rag.shards import load_dataset_shards
        from nanochat.train.data import load_base_tasks
        args, dataset_dir = self.args, Path(dataset_dir)
        self.manifest = json.loads((dataset_dir / "manifest.json").read_text(encoding="utf-8"))
        train = list(load_dataset_shards(str(dataset_dir), "train"))
        val = list(load_dataset_shards(str(dataset_dir), "val")) if "val" in self.manifest["splits"] else []
        if args.eval_examples > 0:  # a fixed subset: comparable across steps, cheap enough to run often
            val = val[: args.eval_examples]
        tasks = load_base_tasks(args.base_tasks, args.task_samples, len(train), self.tokenizer, args.max_seq_len,
                                args.seed)
        train += tasks
        self.data_hash = sha256_file(dataset_dir / "manifest.json")
        for key in ("top_k", "max_doc_length"):
            if key in self.manifest and self.manifest[key] != getattr(args, key):
                print0(f"note: --{key} {getattr(args, key)} differs from the dataset's {self.manifest[key]}; "
                       f"recording {self.manifest[key]}")
                setattr(args, key, self.manifest[key])
        print0(f"data: {len(train)} train ({len(tasks)} from base tasks) / {len(val)} val examples from {dataset_dir}")
        return train, val

    # -------------------------------------------------------------------------
    # optimizer, schedule, resume

    def setup_training(self, train_examples, later_steps: int = 0) -> None:
        """Optimizer, loader and step counts; later_steps follow the supervised ones (REFRAG's reward phase)."""
        args = self.args
        self.lr = args.lr or self.source_meta.get("lr") or 1e-3
        self.optimizer = self.model.setup_optimizer(lr=self.lr * args.init_lr_frac, weight_decay=args.weight_decay)
        self.loader = T.ShardLoader(train_examples, args.device_batch_size, args.max_seq_len, seed=args.seed,
                                    rank=self.rank, world_size=self.world_size)
        steps_per_epoch = max(1, self.loader.steps_per_epoch // args.grad_accum_steps)
        self.num_steps = T.supervised_steps(steps_per_epoch, args.num_epochs, args.max_steps, args.min_steps)
        self.warmup_steps = T.warmup_for(self.num_steps, args.warmup_steps, args.warmup_frac)
        self.total_steps = self.num_steps + later_steps
        self.schedule = C.SaveSchedule(args.save_every, args.save_every_minutes, self.total_steps)
        print0(f"training {self.num_steps} supervised steps ({steps_per_epoch}/epoch: "
               f"{self.num_steps / steps_per_epoch:.2f} epochs; warm-up {self.warmup_steps})"
               f"{f' + {later_steps} later steps' if later_steps else ''}, batch {args.device_batch_size}x"
               f"{args.grad_accum_steps}x{self.world_size}, peak lr {self.lr * args.init_lr_frac:.2e}")

    def resume(self) -> int:
        """With --resume, continue from the newest complete checkpoint (model, optimizer, loader cursor, RNG)."""
        from nanochat.checkpoint_manager import find_last_step, load_checkpoint
        args = self.args
        step = None
        if args.resume:
            try:
                step = find_last_step(self.ckpt_dir)
            except FileNotFoundError:
                print0(f"--resume: no checkpoint in {self.ckpt_dir} yet; starting from step 0")
        if step is not None:
            model_data, optim_data, meta = load_checkpoint(str(self.ckpt_dir), step, self.device, load_optimizer=True)
            self.model.load_state_dict(model_data)
            if optim_data is not None:
                self.optimizer.load_state_dict(optim_data)
            state = resume.load_train_state(self.ckpt_dir, step, self.rank)
            self.loader.cursor = state["cursor"]
            resume.set_rng_state(state["rng"])
            self.metrics.update({k: v for k, v in (meta.get("metrics") or {}).items() if k in self.metrics})
            self.start_step = step
            print0(f"resumed from step {step} of {self.total_steps} (epoch {self.loader.cursor.epoch}, "
                   f"example {self.loader.cursor.position})")
        self.log = progress.MetricsLogger(self.ckpt_dir / "metrics.csv", run_name=args.run, config=vars(args),
                                          rank=self.rank, resume_step=self.start_step)
        if self.stop.requested:  # a signal during data loading: nothing new to save
            raise C.Interrupted(self.start_step, self.stop.received)
        return self.start_step

    # -------------------------------------------------------------------------
    # the supervised step loop

    def validation_loss(self, loss_model, val_examples) -> float | None:
        if not val_examples:
            return None
        self.model.eval()
        batches = T.eval_batches(val_examples, self.args.device_batch_size, self.args.max_seq_len, self.rank,
                                 self.world_size)
        v = T.evaluate_loss(loss_model, batches, self.device, self.autocast_ctx)
        self.model.train()
        return v

    def supervised(self, loss_model, val_examples, desc: str, on_eval=None, on_step=None) -> None:
        """Steps start_step..num_steps: loss on supervised tokens, linear lr decay, validation every --eval_every
        (then on_eval() -> extra figures), a metrics row, on_step(done, loss, extra), checkpoints when due."""
        args = self.args
        self.ddp_model = T.wrap_ddp(loss_model, self.ddp, self.device)
        self.model.train()
        if self.start_step >= self.num_steps:
            return
        bar = progress.progress_bar(self.num_steps, initial=self.start_step, desc=desc, rank=self.rank)
        tput = progress.Throughput()
        try:
            for step in range(self.start_step, self.num_steps):
                lr_now = T.set_lr(self.optimizer, T.lr_multiplier(step, self.num_steps, self.warmup_steps,
                                                                  warmdown_frac=1.0))
                loss_sum = 0.0
                for micro in range(args.grad_accum_steps):
                    x, y = self.loader.next_batch()
                    x, y = x.to(self.device), y.to(self.device)  # (B, T)
                    if self.ddp:  # sync gradients only on the last micro-step
                        self.ddp_model.require_backward_grad_sync = micro == args.grad_accum_steps - 1
                    with self.autocast_ctx:
                        loss = self.ddp_model(x, y) / args.grad_accum_steps
                    loss.backward()
                    loss_sum += loss.item()
                    tput.add(x.numel() * self.world_size)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                train_loss = T.all_reduce_mean(loss_sum, self.device)
                done = step + 1
                bar.update(1)
                bar.set_postfix(loss=f"{train_loss:.3f}")
                val_loss, extra = None, {}
                if done == self.num_steps or (args.eval_every > 0 and done % args.eval_every == 0):
                    val_loss = self.validation_loss(loss_model, val_examples)
                    if val_loss is not None:
                        self.metrics["val_loss"] = val_loss
                    extra = on_eval() if on_eval else {}
                    print0(f"{desc} step {done}/{self.num_steps} | train loss {train_loss:.4f} | val loss "
                           f"{'-' if val_loss is None else f'{val_loss:.4f}'}{f' | {extra}' if extra else ''}")
                self.metrics["train_loss"] = train_loss
                self.log.log(step=done, loss=round(train_loss, 6), val_loss=val_loss, lr=lr_now,
                             tokens_per_s=round(tput.rate()), elapsed_s=round(time.time() - self.t0, 2))
                if on_step:
                    on_step(done, train_loss, extra)
                self.after_step(done, phase_end=self.num_steps)
        finally:
            bar.close()

    # -------------------------------------------------------------------------
    # checkpoints and the end

    def after_step(self, done: int, phase_end: int, **checkpoint_metrics) -> None:
        """Save at a phase's end, every --save_every steps or --save_every_minutes, at --stop_at_step and on a
        stop signal (all ranks agree); then leave the loop if asked to stop."""
        args = self.args
        time_due, stop = T.any_rank(self.schedule.time_due(), self.stop.requested, device=self.device)
        if done == phase_end or done == args.stop_at_step or self.schedule.step_due(done) or time_due or stop:
            self.save(done, {**self.metrics, **checkpoint_metrics})
        if stop:
            raise C.Interrupted(done, self.stop.received or signal.SIGTERM)
        if done == args.stop_at_step and done < self.total_steps:
            raise C.Interrupted(done)

    def save(self, step: int, metrics: dict | None = None) -> None:
        """One complete checkpoint: every rank's train state, then (rank 0) optimizer, model and meta last; then
        --keep_last pruning."""
        from nanochat.checkpoint_manager import save_checkpoint
        args = self.args
        meta = {"step": step, "model_config": asdict(self.model.config), "model_tag": self.out_tag,
                "mode": self.mode, "source": args.source,
                "source_tag": self.source_meta.get("model_tag", args.model_tag),
                "source_step": self.source_meta.get("step"), "kb_id": self.kb.kb_id, "kb_path": str(self.kb.path),
                "data_manifest_sha256": self.data_hash, "lr": self.lr, "cursor": self.loader.cursor.to_dict(),
                "metrics": dict(self.metrics if metrics is None else metrics), **self.meta_extra,
                "args": {k: v for k, v in vars(args).items() if k != "config_files"}}
        resume.save_train_state(self.ckpt_dir, step, self.loader.cursor, self.rank)
        T.barrier()  # every rank's state is on disk before meta marks the step complete
        if self.rank == 0:
            save_checkpoint(str(self.ckpt_dir), step, self.model.state_dict(), self.optimizer.state_dict(), meta,
                            tokenizer=self.tokenizer)
            C.prune(self.ckpt_dir, args.keep_last)
        T.barrier()
        self.schedule.saved()

    def finish(self, **done_fields) -> None:
        """done.json (the workflow's declared output), written last by rank 0."""
        if self.total_steps == 0:
            self.save(0)  # nothing trained: still leave a loadable checkpoint
        if self.rank == 0:
            atomic_write_json(self.ckpt_dir / "done.json", {
                "step": self.total_steps, "model_tag": self.out_tag, "kb_id": self.kb.kb_id, "metrics": self.metrics,
                "data_manifest_sha256": self.data_hash, "resumed_from": self.start_step or None, **done_fields,
                "elapsed_s": round(time.time() - self.t0, 1)})
            print0(f"{self.mode}_finetune: done, {self.total_steps} steps, val loss {self.metrics['val_loss']}, "
                   f"checkpoint {self.ckpt_dir}")
