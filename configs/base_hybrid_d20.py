# Read by: torchrun --standalone --nproc_per_node=8 -m scripts.base_train configs/base_hybrid_d20.py --knowledge_base data/my_kb
# A depth-20 hybrid base model for when no nanochat checkpoint exists (GPU sizes, as nanochat's d20).
# Literal assignments only; every key is a flag of scripts.base_train; later flags override.

model_tag = "d20"
depth = 20
block_pattern = "T,T,T,T,T,T,T,T,M,M,M,M,M,M,M,M,M,M,M,M"   # early attention, late Mamba (the guide's)
n_embd = 1280                  # 64 x depth, as nanochat
n_head = 10                    # head dim 128
max_seq_len = 2048
device_batch_size = 32
max_steps = 5000
lr = 0.001
warmup_steps = 200
device = "cuda"
seed = 0
