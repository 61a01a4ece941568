# Read by: python -m scripts.rag_finetune configs/rag_tiny_cpu.py --knowledge_base data/rag_examples/knowledge_base
# RAG fine-tuning of the tiny CPU hybrid (minutes on a laptop; for tests and the workflow's smoke run).
# Literal assignments only; every key is a flag of scripts.rag_finetune; later flags override.
# The model comes from <base_dir>/base_checkpoints/d4, trained with configs/base_tiny_cpu.py:
# 4 layers "T,T,M,M", n_embd 128, 4 heads, max_seq_len 512, on the configs/tok_tiny_cpu.py tokenizer.

source = "base"                # no mid-training on CPU: fine-tune the base model directly
model_tag = "d4"
retriever_type = "bm25"        # no embedding model needed
top_k = 3
max_doc_length = 96            # 3 x 96 document tokens + question + answer fit in 512
max_seq_len = 512
device_batch_size = 4
grad_accum_steps = 1
num_epochs = 1
max_steps = 60                 # enough to see the validation loss fall; -1 = a full epoch
lr = 0.001
init_lr_frac = 1.0             # tiny model trained from scratch: full learning rate
eval_every = 20
run = "rag_tiny_cpu"
device = "cpu"
seed = 0
