# Read by: torchrun --standalone --nproc_per_node=8 -m scripts.rag_finetune configs/rag_hybrid_d20.py --knowledge_base data/my_kb
# RAG fine-tuning of the depth-20 hybrid on 8 GPUs (80 GB each). Literal assignments only (read with ast);
# every key is a flag of scripts.rag_finetune and any flag given after this file overrides it.
# The architecture comes from the source checkpoint <base_dir>/mid_checkpoints/d20 (trained with
# configs/base_hybrid_d20.py): 20 layers, block_pattern "T,T,T,T,T,T,T,T,M,M,M,M,M,M,M,M,M,M,M,M"
# (early attention, late Mamba), n_embd 1280, 10 heads.

source = "mid"                 # start from the mid-trained checkpoint (use "base" if you have none)
model_tag = "d20"              # source tag under mid_checkpoints/, and the output tag under rag_checkpoints/
retriever_type = "dense"       # documents precomputed with all-MiniLM-L6-v2 + FAISS
top_k = 5                      # documents per question (Mamba layers cope with up to ~10)
max_doc_length = 300           # tokens kept per document
max_seq_len = 2048             # tokens per example; top_k * max_doc_length must leave room for Q and A
device_batch_size = 4          # examples per GPU per micro-step (2 for 40 GB cards)
grad_accum_steps = 1           # total batch = 8 GPUs x 4 x 1 = 32 conversations
num_epochs = 1
init_lr_frac = 0.02            # careful fine-tuning: 2% of the pretraining learning rate
eval_every = 100               # validation loss every 100 steps
run = "rag_hybrid_d20"         # wandb run name (only used when WANDB_RUN is set)
device = "cuda"
seed = 0
