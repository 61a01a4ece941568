"""The fine-tune scripts' flags, defined once: scripts.rag_finetune and scripts.refrag_finetune build their parser
here and each adds only its own flags. Choices come from the registries; per-script defaults are arguments.
"""
from __future__ import annotations

from nanochat.cli import ArgumentParser
from nanochat.retrieval.registry import RETRIEVERS

# When to save, not what is learned: changing them must not discard a partial run (nanochat.pipeline.launch).
from nanochat.train.checkpoints import CHECKPOINT_CADENCE_FLAGS  # noqa: F401  (when to save, not what is learned)


# The checkpoint families a fine-tune starts from (nanochat.checkpoint_manager.SOURCES names their directories):
# base models (trained here, or upstream nanochat's), upstream's mid-trained (before Jan 2026) and chat-SFT models.
START_SOURCES = ("base", "mid", "sft")


def finetune_parser(description: str, mode: str, sources: tuple[str, ...] = START_SOURCES,
                    device_batch_size: int = 4, max_doc_length: int = 300, eval_examples: int = 256) -> ArgumentParser:
    """The flags both fine-tunes share (the guide's first); `mode` names the output family (<mode>_checkpoints/)."""
    p = ArgumentParser(description=description)
    # knowledge base and retrieval
    p.add_argument("--knowledge_base", required=True, help="KB directory (must exist)")
    p.add_argument("--retriever_type", default="simple", choices=list(RETRIEVERS),
                   help="retriever used to precompute documents (every hop's, for REFRAG)")
    p.add_argument("--top_k", type=int, default=5,
                   help="documents per query in the retrieval message (more for Mamba, up to 10; REFRAG shows "
                        "--top_k_per_hop per hop instead)")
    p.add_argument("--max_doc_length", type=int, default=max_doc_length,
                   help="words kept per document (truncation; -1 = no limit)")
    p.add_argument("--p_gold", type=float, default=0.8,
                   help="RAFT: share of training examples whose documents include the gold ones")
    # data
    p.add_argument("--dataset", default=None,
                   help="pre-tokenised shards from python -m nanochat.rag.dataset (skips building them here)")
    p.add_argument("--queries_train", default=None,
                   help="training queries (default: queries_train.jsonl beside the KB, else questions from the "
                        "documents)")
    p.add_argument("--queries_val", default=None, help="validation queries (default: queries_val.jsonl beside the KB)")
    p.add_argument("--base_tasks", default=None,
                   help="general chat to mix in: SmolTalk (default; only if cached locally), none, or JSONL files")
    p.add_argument("--task_samples", type=int, default=-1,
                   help="general conversations mixed in (-1 = one per 4 retrieval examples)")
    # model source and output
    p.add_argument("--source", default="mid", choices=list(sources),
                   help="checkpoint family to start from: <base_dir>/{base,mid,chatsft,rag}_checkpoints/ (sft = "
                        "upstream nanochat's chatsft_checkpoints)")
    p.add_argument("--model_tag", default=None,
                   help="source checkpoint tag (default: largest model); also the output tag")
    p.add_argument("--output_tag", default=None,
                   help=f"output tag under {mode}_checkpoints/ (default: --model_tag or the source's tag)")
    p.add_argument("--step", type=int, default=None, help="source checkpoint step (default: last)")
    p.add_argument("--base_dir", default=None,
                   help="checkpoints root (default $NANOCHAT_BASE_DIR or ~/.cache/nanochat)")
    # optimisation
    p.add_argument("--num_epochs", type=int, default=1, help="passes over the training examples")
    p.add_argument("--max_steps", type=int, default=-1,
                   help="cap on supervised optimizer steps (-1 = num_epochs worth; 0 = none)")
    p.add_argument("--min_steps", type=int, default=0,
                   help="floor on supervised optimizer steps: fewer questions get more epochs, not fewer updates")
    p.add_argument("--device_batch_size", type=int, default=device_batch_size,
                   help="examples per rank per micro-step (REFRAG's reward phase: questions per rank)")
    p.add_argument("--grad_accum_steps", type=int, default=1, help="micro-steps per supervised optimizer step")
    p.add_argument("--max_seq_len", type=int, default=2048,
                   help="tokens per example (longer ones are cut; longer than the source model's context extends it)")
    p.add_argument("--lr", type=float, default=None,
                   help="base learning rate (default: the source's pretraining lr, else 1e-3)")
    p.add_argument("--init_lr_frac", type=float, default=1.0,
                   help="peak lr = lr * init_lr_frac (0.01 = careful fine-tuning)")
    p.add_argument("--warmup_steps", type=int, default=0, help="linear lr warmup steps")
    p.add_argument("--warmup_frac", type=float, default=0.0,
                   help="warmup as a share of the supervised steps (used when --warmup_steps is 0)")
    p.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay")
    # evaluation, checkpoints, logging
    p.add_argument("--eval_every", type=int, default=100,
                   help="validation loss (REFRAG: and held-out EM) every N steps (-1 = only at the end)")
    p.add_argument("--eval_examples", type=int, default=eval_examples,
                   help="validation examples per val-loss measurement (-1 = all)")
    p.add_argument("--save_every", type=int, default=-1,
                   help="checkpoint every N optimizer steps (0 = about four per run; -1 = only at the end)")
    p.add_argument("--save_every_minutes", type=float, default=0,
                   help="also checkpoint when this many minutes passed since the last one (0 = off)")
    p.add_argument("--keep_last", type=int, default=0, help="keep only the newest N checkpoints (0 = keep all)")
    p.add_argument("--stop_at_step", type=int, default=-1,
                   help="stop after saving this step, as if killed (time-sliced jobs, resume tests; -1 = off)")
    p.add_bool("--resume", default=False,
               help="continue from the last complete checkpoint of the output tag (a finished run is not redone)")
    p.add_argument("--run", default="dummy", help="wandb run name (wandb used only when WANDB_RUN is set)")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto")
    p.add_argument("--num_threads", type=int, default=-1,
                   help="CPU threads per process (-1 = auto: 1 when the machine is oversubscribed)")
    p.add_argument("--seed", type=int, default=0, help="data order, RAFT sampling and (REFRAG) answer-sampling seed")
    return p
