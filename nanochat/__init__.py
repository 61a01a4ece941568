"""nanochat-rag: fine-tune nanochat-style Mamba / hybrid models to answer from a user's documents.

The library is grouped by the stage of the data path it serves:

    data/        documents, chunking, queries, the synthetic world, leakage checks, sources/ (BEIR, SQuAD, HotpotQA)
    retrieval/   the knowledge base, its indexes, embeddings, precomputed (multi-hop) retrieval and its evaluation
    rag/         conversations, RAFT / multi-hop training data, answer metrics, rewards, held-out evaluation, plots
    train/       the fine-tuning loop pieces shared by scripts.rag_finetune and scripts.refrag_finetune
    pipeline/    the Snakemake / DVC glue: config checks, launch, report, dvc.yaml
    gpt, engine, tokenizer, checkpoint_manager, copy_head, blocks/, mamba/: the model, flat as in nanochat
"""
from nanochat import _moved

_moved.install()
