# Read by: torchrun --standalone --nproc_per_node=8 -m scripts.refrag_finetune configs/refrag_hybrid_d20.py --knowledge_base data/my_kb
# REFRAG (multi-hop retrieval + reward-driven phase) fine-tuning of the depth-20 hybrid on 8 GPUs.
# Literal assignments only; every key is a flag of scripts.refrag_finetune; later flags override.
# Architecture from the source checkpoint mid_checkpoints/d20: 20 layers,
# block_pattern "T,T,T,T,T,T,T,T,M,M,M,M,M,M,M,M,M,M,M,M", n_embd 1280, 10 heads.

source = "mid"
model_tag = "d20"
retriever_type = "dense"
max_hops = 3                   # retrieval rounds per question
top_k_per_hop = 3              # 3 hops x 3 documents = up to 9 documents per example
use_rewards = True             # reward-weighted phase after the supervised warm-up
max_doc_length = 200           # shorter documents: more of them per example than RAG
max_seq_len = 2048
device_batch_size = 2          # multi-hop examples are long: half the RAG batch
grad_accum_steps = 2           # keeps the total batch at 8 x 2 x 2 = 32
num_epochs = 1
init_lr_frac = 0.02
eval_every = 100
run = "refrag_hybrid_d20"
device = "cuda"
seed = 0
