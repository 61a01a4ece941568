"""REFRAG fine-tuning: multi-hop retrieval conversations, then a reward-driven phase.

REFRAG here means the guide's recursive multi-hop RAG trained with rewards, not the 2025 chunk-compression
technique of the same name.

    torchrun --standalone --nproc_per_node=8 -m scripts.refrag_finetune --knowledge_base data/my_kb \
        --source mid --max_hops 3 --top_k_per_hop 3 --use_rewards true --device_batch_size 2

(a) Supervised warm-up on multi_hop conversations: --dataset gives the shards (the workflow's build_dataset rule
    makes them with `python -m nanochat.rag.dataset --mode refrag`), or this script precomputes multi-hop
    retrieval once (nanochat.retrieval.multihop) and builds them the same way. The step loop is rag_finetune's
    (nanochat.train.session).
(b) --use_rewards true: for each training question sample --num_samples answers from the current model,
    reward them (nanochat.rag.rewards), advantage = reward - group mean, policy-gradient loss on the sampled
    answer tokens only, for --rl_steps steps (nanochat.train.reward_phase).
(c) rewards, their components and held-out EM go to <ckpt>/rewards.csv and the console side by side;
    <ckpt>/rewards.png plots them. Checkpoints: <base_dir>/refrag_checkpoints/<tag>/; done.json is written last.

Steps are numbered across both phases (warm-up 1..W, rewards W+1..W+R); periodic checkpoints, SIGTERM/SIGUSR1
and --resume work in both. Prompts too long for the model are shortened (documents, then hop queries); those
that still do not fit are skipped and counted, never a crash.
"""
from __future__ import annotations

import time
from pathlib import Path

from nanochat.common import print0
from nanochat.retrieval.hop_strategies import DEFAULT_STRATEGY, offline_choices
from nanochat.train import data as train_data
from nanochat.train import reward_phase as RP
from nanochat.train.args import START_SOURCES, finetune_parser
from nanochat.train.session import FineTune


def build_parser():
    p = finetune_parser("REFRAG fine-tuning (multi-hop retrieval + rewards; Mamba / hybrid models)", mode="refrag",
                        sources=(*START_SOURCES, "rag"), device_batch_size=2, max_doc_length=200, eval_examples=-1)
    p.add_argument("--max_hops", type=int, default=3, help="retrieval rounds per question")
    p.add_argument("--top_k_per_hop", type=int, default=3, help="new documents per round")
    p.add_bool("--use_rewards", default=True, help="run the reward phase after the supervised warm-up")
    p.add_argument("--hop_strategy", default=DEFAULT_STRATEGY, choices=offline_choices(),
                   help="follow-up query of the next hop (nanochat.retrieval.hop_strategies; append = entities)")
    p.add_argument("--num_samples", type=int, default=4, help="answers sampled per question (group size)")
    p.add_argument("--rl_steps", type=int, default=30, help="reward-phase optimizer steps")
    p.add_argument("--rl_lr_frac", type=float, default=0.1, help="reward-phase lr = warm-up peak lr * this")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature in the reward phase (> 0)")
    p.add_argument("--max_new_tokens", type=int, default=24, help="answer tokens sampled / generated")
    p.add_argument("--generate_batch_size", type=int, default=None,
                   help="rows decoded side by side when sampling a step's answers and scoring held-out EM "
                        "(default: a step's questions x samples; held-out: per device, nanochat.engine.DEFAULT_BATCH_SIZE)")
    p.add_argument("--eval_questions", type=int, default=32, help="held-out (val) questions for EM during training")
    p.add_argument("--retrieval", default=None, help="precomputed multi-hop retrieval table (skips precompute)")
    return p


def reward_questions(run, prompt_budget: int) -> tuple[list, list, dict]:
    """(reward-phase items, held-out items, skipped counts): questions with their multi-hop retrieval message,
    shortened to fit the prompt budget (those that still do not fit are skipped and counted)."""
    from nanochat.data.queries import load_queries
    from nanochat.rag import multihop_data as MD
    from nanochat.rag.conversation import ChunkStore
    from nanochat.retrieval.precompute import load_precomputed
    args = run.args
    table_path = args.retrieval or run.manifest.get("retrieval")
    qfiles = run.manifest.get("queries") or {k: str(v) for k, v in train_data.resolve_query_files(
        run.kb.path, args.queries_train, args.queries_val)[0].items()}
    items, heldout, skipped = [], [], {}
    if not (table_path and Path(table_path).is_file()):
        return items, heldout, skipped
    table, store = load_precomputed(table_path), ChunkStore(run.kb.chunks)
    max_doc_length = None if args.max_doc_length is not None and args.max_doc_length < 0 else args.max_doc_length
    if "train" in qfiles:
        items = [it for it in MD.prompt_items(load_queries(qfiles["train"]), table, store, "train", max_doc_length)
                 if it["hop_doc_ids"] and it["answers"]]
        items, skipped["reward"] = MD.fit_items(run.tokenizer, items, prompt_budget)
    if "val" in qfiles:
        heldout = MD.prompt_items(load_queries(qfiles["val"]), table, store, "val", max_doc_length)
        heldout, skipped["heldout"] = MD.fit_items(run.tokenizer, [it for it in heldout if it["hop_doc_ids"]],
                                                   prompt_budget)
        heldout = heldout[:args.eval_questions]
    return items, heldout, skipped


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.use_rewards and args.temperature <= 0:
        raise SystemExit("--temperature must be > 0 for the reward phase (sampling)")
    run = FineTune(args, mode="refrag")
    with run:
        if run.finished():
            return run.ckpt_dir
        print0(f"{args.max_hops} hops x {args.top_k_per_hop} documents ({args.hop_strategy})")
        # data: warm-up shards, plus the multi-hop table's questions for the reward phase and held-out EM
        dataset_dir = run.dataset_dir(build=lambda d: train_data.build_refrag_dataset(
            run.kb, args, d, run.ckpt_dir / "data", run.tokenizer))
        train_examples, val_examples = run.load_data(dataset_dir)
        if run.manifest.get("kind") != "multi_hop":
            print0(f"note: {dataset_dir} holds single-hop shards; REFRAG warms up on them as they are "
                   f"(python -m nanochat.rag.dataset --mode refrag builds multi_hop ones)")
        prompt_budget = min(args.max_seq_len, run.model.config.sequence_len) - args.max_new_tokens
        rl_items, heldout, skipped = reward_questions(run, prompt_budget)
        print0(f"{len(rl_items)} reward-phase questions, {len(heldout)} held-out questions; prompts over "
               f"{prompt_budget} tokens skipped: {skipped}")
        # optimizer, schedule, resume
        rl_steps = args.rl_steps if args.use_rewards else 0
        run.setup_training(train_examples, later_steps=rl_steps)
        run.meta_extra = {"max_hops": args.max_hops, "top_k_per_hop": args.top_k_per_hop,
                          "hop_strategy": args.hop_strategy, "warmup_steps": run.num_steps}
        run.resume()
        reward_log = RP.reward_log(run.ckpt_dir / "rewards.csv")
        if run.rank == 0:
            reward_log.resume(run.start_step)  # a resumed run rewrites the steps after its checkpoint

        def heldout_em() -> dict:
            from nanochat.rag import refrag_eval as RE
            if not heldout:
                return {}
            run.model.eval()
            rows = RE.evaluate_items(run.model, run.tokenizer, heldout, "refrag", args.max_new_tokens, desc="held-out",
                                     batch_size=args.generate_batch_size)
            run.model.train()
            s = RE.summarize(rows)
            return {"heldout_em": round(s["em"], 4), "heldout_f1": round(s["f1"], 4),
                    "heldout_reward": round(s["reward"], 4)}

        def log_warmup(done: int, loss: float, extra: dict) -> None:
            if run.rank == 0:
                reward_log.append(step=done, phase="warmup", loss=round(loss, 6), **extra,
                                  elapsed_s=round(time.time() - run.t0, 2))

        # (a) supervised warm-up, (b) reward phase
        run.supervised(run.model, val_examples, desc="refrag warm-up",
                       on_eval=lambda: heldout_em() if run.rank == 0 else {}, on_step=log_warmup)
        RP.run_reward_phase(run, rl_items, prompt_budget, heldout_em, reward_log)
        # (c) plot and done marker
        png = None
        if run.rank == 0 and reward_log.path.exists():
            from nanochat.rag import plots
            png = plots.plot_reward_curve(reward_log.path, run.ckpt_dir / "rewards.png")
        run.finish(warmup_steps=run.num_steps, rl_steps=rl_steps, rewards_csv=str(reward_log.path),
                   rewards_png=str(png) if png else None, skipped_prompts=skipped)
    return run.ckpt_dir


if __name__ == "__main__":
    main()
