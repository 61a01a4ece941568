# Read by: python -m scripts.base_train configs/base_tiny_cpu.py --knowledge_base data/rag_examples/knowledge_base
# The tiny CPU hybrid that configs/rag_tiny_cpu.py and configs/refrag_tiny_cpu.py fine-tune.
# Literal assignments only; every key is a flag of scripts.base_train; later flags override.

model_tag = "d4"
depth = 4
block_pattern = "T,T,M,M"      # one attention layer pair, then Mamba
n_embd = 128
n_head = 4                     # head dim 32
max_seq_len = 512
device_batch_size = 8
max_steps = 200
lr = 0.003
warmup_steps = 20
device = "cpu"
seed = 0
