"""RAG fine-tuning of a Mamba or hybrid nanochat model on retrieval-augmented conversations.

    python -m scripts.rag_finetune --knowledge_base data/my_kb --source mid --retriever_type dense --top_k 5
    torchrun --standalone --nproc_per_node=8 -m scripts.rag_finetune configs/rag_hybrid_d20.py --knowledge_base data/my_kb

Retrieval is never run inside the loop: examples come pre-tokenised from nanochat.rag.dataset shards
(--dataset), or this script precomputes retrieval for the queries once and builds the shards itself. Loss is
on assistant tokens only. Checkpoints go to <base_dir>/rag_checkpoints/<tag>/ with a metrics CSV beside them;
--save_every / --save_every_minutes add periodic ones, SIGTERM or SIGUSR1 saves one before exiting, and
--resume continues a killed run with the same data order (nanochat.train.session).
"""
from __future__ import annotations

from nanochat.train import data as train_data
from nanochat.train.args import finetune_parser
from nanochat.train.loop import SupervisedLoss
from nanochat.train.session import FineTune


def build_parser():
    return finetune_parser("RAG fine-tuning (Mamba / hybrid models)", mode="rag")


def main(argv=None):
    args = build_parser().parse_args(argv)
    run = FineTune(args, mode="rag")
    with run:
        if run.finished():
            return run.ckpt_dir
        # data: the workflow's shards, or built here once (rank 0) from the queries and the KB
        dataset_dir = run.dataset_dir(build=lambda d: train_data.build_rag_dataset(
            run.kb.path, args, d, run.ckpt_dir / "data", run.tokenizer))
        train_examples, val_examples = run.load_data(dataset_dir)
        # optimizer, schedule, resume
        run.setup_training(train_examples)
        run.resume()
        # training: the lm_head runs only where the answer is
        run.supervised(SupervisedLoss(run.model), val_examples, desc="rag_finetune")
        run.finish()
    return run.ckpt_dir


if __name__ == "__main__":
    main()
