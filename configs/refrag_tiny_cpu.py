# Read by: python -m scripts.refrag_finetune configs/refrag_tiny_cpu.py --knowledge_base data/rag_examples/knowledge_base
# REFRAG fine-tuning of the tiny CPU hybrid (tests and the workflow's smoke run).
# Literal assignments only; every key is a flag of scripts.refrag_finetune; later flags override.
# Model from base_checkpoints/d4 (configs/base_tiny_cpu.py): 4 layers "T,T,M,M", n_embd 128, 4 heads.

source = "base"
model_tag = "d4"
retriever_type = "bm25"
max_hops = 2
top_k_per_hop = 2              # 2 hops x 2 documents x 96 tokens + question + answer fit in 512
use_rewards = True
max_doc_length = 96
max_seq_len = 512
device_batch_size = 2
grad_accum_steps = 1
num_epochs = 1
init_lr_frac = 1.0
eval_every = 20
run = "refrag_tiny_cpu"
device = "cpu"
seed = 0
