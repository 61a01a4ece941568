"""REFRAG fine-tuning: multi-hop retrieval conversations, then a reward-driven phase.

REFRAG here means the guide's recursive multi-hop RAG trained with rewards, not the 2025 chunk-compression technique of the same name.

    torchrun --standalone --nproc_per_node=8 -m scripts.refrag_finetune --knowledge_base data/my_kb \
        --source mid --max_hops 3 --top_k_per_hop 3 --use_rewards true --device_batch_size 2

(a) Supervised warm-up: multi-hop retrieval is precomputed once (nanochat.retrieval.precompute -> nanochat.retrieval.multihop),
    turned into RAFT-style multi_hop conversations (nanochat.rag.refrag) and trained with the RAG loop's pieces
    (nanochat.train.loop); or --dataset gives ready shards (the workflow's).
(b) --use_rewards true: for each training question sample --num_samples answers from the current model,
    reward them (nanochat.rag.rewards), advantage = reward - group mean, policy-gradient loss on the sampled
    answer tokens only, for --rl_steps steps.
(c) rewards, their components and held-out EM go to <ckpt>/rewards.csv and the console side by side;
    <ckpt>/rewards.png plots them. Checkpoints: <base_dir>/refrag_checkpoints/<tag>/; done.json is written last.

Steps are numbered across both phases (warm-up 1..W, rewards W+1..W+R). --resume continues a killed run
from its last checkpoint (model, optimizer, loader cursor and RNG via nanochat.train.loop's train state);
reward-phase sampling is seeded by step, so a resumed run samples what the killed one would have.
Prompts too long for the model are shortened (documents, then hop queries); those that still do not fit
are skipped and counted, never a crash.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path


from nanochat.train import data as train_data
from nanochat.train import loop as T
from nanochat.train import progress
from nanochat.train import resume
from nanochat.cli import ArgumentParser
from nanochat.common import atomic_write_json, compute_cleanup, compute_init, get_base_dir, print0, setup_logging, sha256_file


def build_parser() -> ArgumentParser:
    p = ArgumentParser(description="REFRAG fine-tuning (multi-hop retrieval + rewards; Mamba / hybrid models)")
    # the guide's REFRAG flags
    p.add_argument("--max_hops", type=int, default=3, help="retrieval rounds per question")
    p.add_argument("--top_k_per_hop", type=int, default=3, help="new documents per round")
    p.add_bool("--use_rewards", default=True, help="run the reward phase after the supervised warm-up")
    p.add_argument("--hop_strategy", default="entities", help="follow-up query: titles | passage | entities | focused (append = entities)")
    p.add_argument("--num_samples", type=int, default=4, help="answers sampled per question (group size)")
    p.add_argument("--rl_steps", type=int, default=30, help="reward-phase optimizer steps")
    p.add_argument("--rl_lr_frac", type=float, default=0.1, help="reward-phase lr = warm-up peak lr * this")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature in the reward phase (> 0)")
    p.add_argument("--max_new_tokens", type=int, default=24, help="answer tokens sampled / generated")
    p.add_argument("--eval_questions", type=int, default=32, help="held-out (val) questions for EM during training")
    p.add_argument("--retrieval", default=None, help="precomputed multi-hop retrieval table (skips precompute)")
    # the RAG flags (scripts/rag_finetune.py)
    p.add_argument("--knowledge_base", required=True, help="KB directory (must exist)")
    p.add_argument("--retriever_type", default="simple", choices=["simple", "bm25", "dense", "hybrid"], help="retriever for the hops")
    p.add_argument("--top_k", type=int, default=5, help="accepted for RAG config compatibility; documents per hop is --top_k_per_hop")
    p.add_argument("--max_doc_length", type=int, default=200, help="words kept per document")
    p.add_argument("--p_gold", type=float, default=0.8, help="RAFT: share of warm-up examples with every gold document")
    p.add_argument("--dataset", default=None, help="pre-tokenised warm-up shards (nanochat.rag.raft layout)")
    p.add_argument("--queries_train", default=None, help="training queries (default: queries_train.jsonl beside the KB)")
    p.add_argument("--queries_val", default=None, help="held-out queries (default: queries_val.jsonl beside the KB)")
    p.add_argument("--base_tasks", default=None, help="comma list of general chat tasks to mix in (default SmolTalk, only if cached)")
    p.add_argument("--task_samples", type=int, default=-1, help="examples taken per base task (-1 = all)")
    p.add_argument("--source", default="mid", help="checkpoint family to start from: base | mid | rag")
    p.add_argument("--model_tag", default=None, help="source checkpoint tag (default: largest model)")
    p.add_argument("--output_tag", default=None, help="output tag under refrag_checkpoints/ (default: --model_tag)")
    p.add_argument("--step", type=int, default=None, help="source checkpoint step (default: last)")
    p.add_argument("--base_dir", default=None, help="checkpoints root (default $NANOCHAT_BASE_DIR or ~/.cache/nanochat)")
    p.add_argument("--num_epochs", type=int, default=1, help="warm-up passes over the training examples")
    p.add_argument("--max_steps", type=int, default=-1, help="cap on warm-up steps (-1 = num_epochs worth; 0 = no warm-up)")
    p.add_argument("--device_batch_size", type=int, default=2, help="examples (warm-up) / questions (reward phase) per rank")
    p.add_argument("--grad_accum_steps", type=int, default=1, help="micro-steps per warm-up optimizer step")
    p.add_argument("--max_seq_len", type=int, default=2048, help="tokens per example")
    p.add_argument("--lr", type=float, default=None, help="base learning rate (default: the source's, else 1e-3)")
    p.add_argument("--init_lr_frac", type=float, default=1.0, help="peak lr = lr * init_lr_frac")
    p.add_argument("--warmup_steps", type=int, default=0, help="linear lr warmup steps")
    p.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay")
    p.add_argument("--eval_every", type=int, default=100, help="val loss / held-out EM every N steps (-1 = end only)")
    p.add_argument("--save_every", type=int, default=-1, help="checkpoint every N steps (warm-up and reward steps count alike; "
                   "-1 = end of each phase only)")
    p.add_bool("--resume", default=False, help="continue from the last checkpoint of the output tag (a finished run is not redone)")
    p.add_argument("--stop_at_step", type=int, default=-1, help="stop after saving this step, as if killed "
                   "(time-sliced jobs, resume tests; -1 = off)")
    p.add_argument("--run", default="dummy", help="wandb run name (wandb used only when WANDB_RUN is set)")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto")
    p.add_argument("--num_threads", type=int, default=-1, help="CPU threads per process (-1 = auto: 1 when the machine is oversubscribed)")
    p.add_argument("--seed", type=int, default=0, help="data order, RAFT and sampling seed")
    return p


def build_multihop_dataset(kb, args, dataset_dir: Path, work_dir: Path, tokenizer, files: dict | None = None) -> Path:
    """Precompute multi-hop retrieval (unless --retrieval) and write multi_hop RAFT shards + manifest."""
    from nanochat.retrieval.precompute import load_precomputed, precompute_retrieval
    from nanochat.data.queries import load_queries
    from nanochat.rag.conversation import ChunkStore
    from nanochat.rag.shards import write_shards
    from nanochat.rag.multihop_data import build_multihop_examples, encode_multihop
    if files is None:
        files, _ = train_data.resolve_query_files(kb.path, args.queries_train, args.queries_val)
        if not files:
            raise FileNotFoundError(f"REFRAG needs multi-hop training questions: pass --queries_train (none found beside {kb.path})")
        if "val" not in files:
            files = train_data.split_train_val(files["train"], work_dir, seed=args.seed)
    table_path = Path(args.retrieval) if args.retrieval else work_dir / "retrieval_multihop.parquet"
    if not args.retrieval:
        precompute_retrieval(kb.path, args.retriever_type, {k: str(v) for k, v in files.items()}, args.top_k_per_hop,
                             table_path, max_hops=args.max_hops, top_k_per_hop=args.top_k_per_hop, strategy=args.hop_strategy)
    table = load_precomputed(table_path)
    store, splits = ChunkStore(kb.chunks), {}
    dataset_dir.mkdir(parents=True, exist_ok=True)
    (dataset_dir / "manifest.json").unlink(missing_ok=True)
    for split, path in files.items():
        examples, stats = build_multihop_examples(load_queries(path), table, store, split, args.top_k_per_hop,
                                                  args.p_gold, args.max_doc_length, args.seed)
        enc = [encode_multihop(tokenizer, e["conversation"], e["cited"], args.max_seq_len, args.max_doc_length,
                               e["answers"] if e["with_gold"] else None) for e in examples]
        stats["too_long"] = sum(e is None for e in enc)  # did not fit (or lost its answer) even when shortened
        enc = [e for e in enc if e is not None]
        for old in dataset_dir.glob(f"{split}_*.npz"):
            old.unlink()
        stats.update(n_examples=len(enc), shards=write_shards(enc, dataset_dir, split), queries=str(path))
        splits[split] = stats
        print0(f"multi-hop {split}: {len(enc)} examples ({stats['too_long']} too long for max_seq_len "
               f"{args.max_seq_len}, {stats['skipped']} without answer/gold)")
    atomic_write_json(dataset_dir / "manifest.json", {
        "format": "nanochat-raft-v1", "kind": "multi_hop", "splits": splits, "max_hops": args.max_hops,
        "top_k_per_hop": args.top_k_per_hop, "hop_strategy": args.hop_strategy, "retrieval": str(table_path),
        "max_seq_len": args.max_seq_len, "max_doc_length": args.max_doc_length,
        "queries": {k: str(v) for k, v in files.items()}, "seed": args.seed})
    return dataset_dir


def is_multihop_table(path) -> bool:
    import pandas as pd
    return bool(path) and Path(path).is_file() and int(pd.read_parquet(path, columns=["hop"])["hop"].max()) > 1


def base_task_examples(args, n_rag: int, tokenizer, base_dir) -> list:
    """General chats mixed into the warm-up, as rag_finetune does (nanochat.train.loop.load_base_tasks)."""
    import inspect
    params = inspect.signature(train_data.load_base_tasks).parameters
    if "n_rag" in params:
        return train_data.load_base_tasks(args.base_tasks, args.task_samples, n_rag, tokenizer, args.max_seq_len, args.seed)
    return train_data.load_base_tasks(args.base_tasks, args.task_samples, tokenizer, base_dir, args.max_seq_len, args.seed)


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.use_rewards and args.temperature <= 0:
        raise SystemExit("--temperature must be > 0 for the reward phase (sampling)")
    ddp, rank, local_rank, world_size, device = compute_init(args.device)
    T.seed_everything(args.seed)
    T.set_threads(args.num_threads, device)
    from nanochat.checkpoint_manager import find_last_step, load_checkpoint, load_model, save_checkpoint
    from nanochat.engine import Engine
    from nanochat.gpt import require_mamba
    from nanochat.retrieval.precompute import load_precomputed
    from nanochat.data.queries import load_queries
    from nanochat.rag.conversation import ChunkStore
    from nanochat.rag.shards import load_dataset_shards
    from nanochat.retrieval.kb import KnowledgeBase
    from nanochat.rag import multihop_data as MD
    from nanochat.rag import plots
    from nanochat.rag import refrag_eval as RE
    from nanochat.train import reward_phase as RP
    from nanochat.rag.rewards import COMPONENTS

    kb = KnowledgeBase.load(args.knowledge_base)  # "Knowledge base not found: ..." when missing
    base_dir = get_base_dir(args.base_dir)
    model, tokenizer, source_meta = load_model(args.source, device, phase="train", model_tag=args.model_tag,
                                               step=args.step, base_dir=base_dir)
    require_mamba(model.config)
    if args.max_seq_len > model.config.sequence_len:
        # multi-hop prompts are longer than the source model's context; RoPE tables cover 10x it and Mamba has
        # no length limit, so fine-tuning at the longer length extends the context (saved in the checkpoint)
        if args.max_seq_len > model.rotary_seq_len:
            raise SystemExit(f"--max_seq_len {args.max_seq_len} exceeds what the source model's rotary tables cover "
                             f"({model.rotary_seq_len} tokens)")
        print0(f"context extended from {model.config.sequence_len} to --max_seq_len {args.max_seq_len} tokens")
        model.config.sequence_len = args.max_seq_len
    out_tag = args.output_tag or args.model_tag or source_meta.get("model_tag") or "refrag"
    ckpt_dir = base_dir / "refrag_checkpoints" / out_tag
    if args.resume and (ckpt_dir / "done.json").is_file():
        print0(f"--resume: {ckpt_dir / 'done.json'} exists; nothing to do")
        compute_cleanup()
        return ckpt_dir
    print0(f"source: {args.source} ({source_meta.get('model_tag', args.model_tag)}) -> {ckpt_dir}; "
           f"pattern {model.config.block_pattern}; {args.max_hops} hops x {args.top_k_per_hop} ({args.hop_strategy})")

    # -----------------------------------------------------------------------------
    # Data: warm-up shards, plus the multi-hop table and questions for the reward phase / held-out EM
    work_dir = ckpt_dir / "data"
    dataset_dir = Path(args.dataset) if args.dataset else work_dir / "dataset"
    if args.dataset and (dataset_dir / "manifest.json").is_file():
        kind = json.loads((dataset_dir / "manifest.json").read_text(encoding="utf-8")).get("kind")
        if kind != "multi_hop" and is_multihop_table(args.retrieval):
            # nanochat.rag.raft flattens hops into one single-hop message; REFRAG warms up on the multi_hop form
            print0(f"{dataset_dir} holds single-hop shards; building multi_hop shards from {args.retrieval}")
            dataset_dir = work_dir / "dataset"
            files = {k: v for k, v in (("train", args.queries_train), ("val", args.queries_val)) if v}
            if rank == 0 and not (args.resume and (dataset_dir / "manifest.json").is_file()):
                work_dir.mkdir(parents=True, exist_ok=True)
                build_multihop_dataset(kb, args, dataset_dir, work_dir, tokenizer, files or None)
            T.barrier()
    elif not args.dataset:
        if rank == 0 and not (args.resume and (dataset_dir / "manifest.json").is_file()):
            work_dir.mkdir(parents=True, exist_ok=True)
            build_multihop_dataset(kb, args, dataset_dir, work_dir, tokenizer)
        T.barrier()
    manifest = json.loads((dataset_dir / "manifest.json").read_text(encoding="utf-8"))
    train_examples = list(load_dataset_shards(str(dataset_dir), "train"))
    val_examples = list(load_dataset_shards(str(dataset_dir), "val")) if "val" in manifest["splits"] else []
    train_examples += base_task_examples(args, len(train_examples), tokenizer, base_dir)
    data_hash = sha256_file(dataset_dir / "manifest.json")
    table_path = args.retrieval or manifest.get("retrieval")
    qfiles = manifest.get("queries") or {k: str(v) for k, v in train_data.resolve_query_files(kb.path, args.queries_train, args.queries_val)[0].items()}
    store = ChunkStore(kb.chunks)
    rl_items, heldout, skipped = [], [], {}
    prompt_budget = min(args.max_seq_len, model.config.sequence_len) - args.max_new_tokens
    if table_path and Path(table_path).is_file():
        table = load_precomputed(table_path)
        if "train" in qfiles:
            rl_items = [it for it in MD.prompt_items(load_queries(qfiles["train"]), table, store, "train", args.max_doc_length)
                        if it["hop_doc_ids"] and it["answers"]]
            rl_items, skipped["reward"] = MD.fit_items(tokenizer, rl_items, prompt_budget)
        if "val" in qfiles:
            heldout = MD.prompt_items(load_queries(qfiles["val"]), table, store, "val", args.max_doc_length)
            heldout, skipped["heldout"] = MD.fit_items(tokenizer, [it for it in heldout if it["hop_doc_ids"]], prompt_budget)
            heldout = heldout[:args.eval_questions]
    print0(f"data: {len(train_examples)} warm-up / {len(val_examples)} val examples; {len(rl_items)} reward-phase "
           f"questions, {len(heldout)} held-out questions; prompts over {prompt_budget} tokens skipped: {skipped}")

    # -----------------------------------------------------------------------------
    # Optimizer, schedule, resume
    lr = args.lr or source_meta.get("lr") or 1e-3
    optimizer = model.setup_optimizer(lr=lr * args.init_lr_frac, weight_decay=args.weight_decay)
    loader = T.ShardLoader(train_examples, args.device_batch_size, args.max_seq_len, seed=args.seed, rank=rank,
                           world_size=world_size)
    num_steps = args.num_epochs * max(1, loader.steps_per_epoch // args.grad_accum_steps)
    if args.max_steps >= 0:
        num_steps = min(num_steps, args.max_steps)
    rl_steps = args.rl_steps if args.use_rewards else 0
    total_steps = num_steps + rl_steps
    metrics = {"train_loss": None, "val_loss": None}
    start_step = 0
    if args.resume and ckpt_dir.exists() and any(ckpt_dir.glob("model_*.pt")):
        start_step = find_last_step(str(ckpt_dir))
        model_data, optim_data, meta = load_checkpoint(str(ckpt_dir), start_step, device, load_optimizer=True)
        model.load_state_dict(model_data)
        if optim_data is not None:
            optimizer.load_state_dict(optim_data)
        state = resume.load_train_state(ckpt_dir, start_step, rank)
        loader.cursor = state["cursor"]
        resume.set_rng_state(state["rng"])
        metrics.update({k: v for k, v in (meta.get("metrics") or {}).items() if k in metrics})
        print0(f"resumed from step {start_step} of {total_steps} ({num_steps} warm-up + {rl_steps} reward)")
    elif args.resume:
        print0(f"--resume: no checkpoint in {ckpt_dir} yet; starting from step 0")
    ddp_model = T.wrap_ddp(model, ddp, device)
    autocast_ctx = T.autocast_for(device)
    log = progress.MetricsLogger(ckpt_dir / "metrics.csv", run_name=args.run, config=vars(args), rank=rank,
                          resume_step=start_step)
    rewards_csv = ckpt_dir / "rewards.csv"
    reward_log = RP.reward_log(rewards_csv)
    if rank == 0:
        reward_log.resume(start_step)  # a resumed run rewrites the steps after its checkpoint
    t0 = time.time()

    def heldout_em() -> dict:
        if not heldout:
            return {}
        model.eval()
        rows = RE.evaluate_items(model, tokenizer, heldout, "refrag", args.max_new_tokens, desc="held-out")
        model.train()
        s = RE.summarize(rows)
        return {"heldout_em": round(s["em"], 4), "heldout_f1": round(s["f1"], 4), "heldout_reward": round(s["reward"], 4)}

    def save(step: int, metrics: dict) -> None:
        meta = {"step": step, "model_config": asdict(model.config), "model_tag": out_tag, "source": args.source,
                "source_tag": source_meta.get("model_tag", args.model_tag), "kb_id": kb.kb_id, "kb_path": str(kb.path),
                "data_manifest_sha256": data_hash, "lr": lr, "metrics": metrics, "mode": "refrag",
                "max_hops": args.max_hops, "top_k_per_hop": args.top_k_per_hop, "hop_strategy": args.hop_strategy,
                "warmup_steps": num_steps, "cursor": loader.cursor.to_dict(),
                "args": {k: v for k, v in vars(args).items() if k != "config_files"}}
        if rank == 0:
            save_checkpoint(str(ckpt_dir), step, model.state_dict(), optimizer.state_dict(), meta, tokenizer=tokenizer)
        resume.save_train_state(ckpt_dir, step, loader.cursor, rank)
        T.barrier()

    def checkpoint_due(done: int, phase_end: int) -> bool:
        return done == phase_end or done == args.stop_at_step or (args.save_every > 0 and done % args.save_every == 0)

    def stop_here(done: int) -> bool:
        if done == args.stop_at_step and done < total_steps:
            print0(f"--stop_at_step {done}: stopping without the done marker; continue with --resume")
            log.finish()
            compute_cleanup()
            return True
        return False

    # -----------------------------------------------------------------------------
    # (a) supervised warm-up on multi-hop conversations
    print0(f"warm-up: {num_steps} steps, batch {args.device_batch_size}x{args.grad_accum_steps}x{world_size}")
    model.train()
    if start_step < num_steps:
        bar = progress.progress_bar(num_steps, initial=start_step, desc="refrag warm-up", rank=rank)
        for step in range(start_step, num_steps):
            lr_now = T.set_lr(optimizer, T.lr_multiplier(step, num_steps, args.warmup_steps, warmdown_frac=1.0))
            loss_sum = 0.0
            for micro in range(args.grad_accum_steps):
                x, y = loader.next_batch()
                x, y = x.to(device), y.to(device)  # (B, T)
                if ddp:
                    ddp_model.require_backward_grad_sync = micro == args.grad_accum_steps - 1
                with autocast_ctx:
                    loss = ddp_model(x, y) / args.grad_accum_steps
                loss.backward()
                loss_sum += loss.item()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            train_loss = T.all_reduce_mean(loss_sum, device)
            done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.3f}")
            val_loss, ev = None, {}
            if done == num_steps or (args.eval_every > 0 and done % args.eval_every == 0):
                if val_examples:
                    model.eval()
                    val_loss = T.evaluate_loss(model, T.eval_batches(val_examples, args.device_batch_size, args.max_seq_len,
                                                                     rank, world_size), device, autocast_ctx)
                    model.train()
                    metrics["val_loss"] = val_loss
                ev = heldout_em() if rank == 0 else {}
                print0(f"warm-up step {done}/{num_steps} | train loss {train_loss:.4f} | val loss {val_loss} | {ev}")
            metrics["train_loss"] = train_loss
            log.log(step=done, loss=round(train_loss, 6), val_loss=val_loss, lr=lr_now, elapsed_s=round(time.time() - t0, 2))
            if rank == 0:
                reward_log.append(**{"step": done, "phase": "warmup", "loss": round(train_loss, 6), **ev,
                                           "elapsed_s": round(time.time() - t0, 2)})
            if checkpoint_due(done, num_steps):
                save(done, dict(metrics))
            if stop_here(done):
                bar.close()
                return ckpt_dir
        bar.close()

    # -----------------------------------------------------------------------------
    # (b) reward phase: sample a group per question, advantages vs the group mean, PG loss on sampled tokens
    row = {}
    if rl_steps > 0:
        if not rl_items:
            raise SystemExit("--use_rewards true needs multi-hop retrieval for the training questions "
                             "(pass --retrieval TABLE with a 'train' split, or let this script build it)")
        engine = Engine(model, tokenizer)
        rl_lr = lr * args.init_lr_frac * args.rl_lr_frac
        for g in optimizer.param_groups:
            g["lr"] = rl_lr
        pad = tokenizer.get_bos_token_id()
        rl_start = max(0, start_step - num_steps)
        print0(f"reward phase: {rl_steps} steps x {args.device_batch_size} questions x {args.num_samples} "
               f"samples x {world_size} ranks, lr {rl_lr:.2e}, temperature {args.temperature}")
        bar = progress.progress_bar(rl_steps, initial=rl_start, desc="refrag rewards", rank=rank)
        for step in range(rl_start, rl_steps):
            comps: dict[str, list] = {}
            loss_sum = 0.0
            for b in range(args.device_batch_size):
                i = ((step * args.device_batch_size + b) * world_size + rank) % len(rl_items)
                item = rl_items[i]
                prompt, _ = MD.fit_prompt(tokenizer, item, prompt_budget)  # fits: fit_items kept only such items
                model.eval()
                samples = RP.sample_group(engine, prompt, args.num_samples, args.max_new_tokens, args.temperature,
                                         seed=args.seed * 100003 + step * 1009 + b * 31 + rank)
                model.train()
                scored = RP.score_samples(tokenizer, samples, item)
                for s in scored:
                    for k in COMPONENTS:
                        comps.setdefault(k, []).append(s[k])
                adv = RP.group_advantages([s["reward"] for s in scored]).to(device)
                inputs, targets = RP.policy_gradient_batch(prompt, samples, pad)
                if ddp:
                    ddp_model.require_backward_grad_sync = b == args.device_batch_size - 1
                with autocast_ctx:
                    loss = RP.policy_gradient_loss(ddp_model, inputs.to(device), targets.to(device), adv)
                (loss / args.device_batch_size).backward()
                loss_sum += loss.item() / args.device_batch_size
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            rl_done = step + 1
            done = num_steps + rl_done
            row = {k: round(T.all_reduce_mean(float(sum(v) / len(v)), device), 4) for k, v in comps.items()}
            row.update(step=done, phase="reward", loss=round(T.all_reduce_mean(loss_sum, device), 6))
            if rl_done == rl_steps or (args.eval_every > 0 and rl_done % max(1, args.eval_every // 4) == 0):
                row.update(heldout_em() if rank == 0 else {})
            row["elapsed_s"] = round(time.time() - t0, 2)
            bar.update(1)
            if rank == 0:
                reward_log.append(**row)
                print0(" | ".join(f"{k} {row[k]}" for k in RP.REWARD_FIELDS if k in row and k not in ("phase", "elapsed_s")))
            if checkpoint_due(done, total_steps):
                save(done, {**metrics, "final_reward": row.get("reward"), "heldout_em": row.get("heldout_em")})
            if stop_here(done):
                bar.close()
                return ckpt_dir
        bar.close()

    if total_steps == 0:
        save(0, dict(metrics))  # nothing trained: still leave a loadable checkpoint
    # -----------------------------------------------------------------------------
    # (c) plot and done marker (the workflow's declared output)
    if rank == 0:
        png = plots.plot_reward_curve(rewards_csv, ckpt_dir / "rewards.png") if rewards_csv.exists() else None
        atomic_write_json(ckpt_dir / "done.json", {
            "step": total_steps, "warmup_steps": num_steps, "rl_steps": rl_steps, "model_tag": out_tag,
            "kb_id": kb.kb_id, "metrics": metrics, "data_manifest_sha256": data_hash, "rewards_csv": str(rewards_csv),
            "rewards_png": str(png) if png else None, "resumed_from": start_step or None, "skipped_prompts": skipped,
            "elapsed_s": round(time.time() - t0, 1)})
        print0(f"refrag_finetune: done, {num_steps} warm-up + {rl_steps} reward steps, checkpoint {ckpt_dir}")
    log.finish()
    compute_cleanup()
    return ckpt_dir


if __name__ == "__main__":
    main()
