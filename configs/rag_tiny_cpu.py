# Read by: python -m scripts.rag_finetune configs/rag_tiny_cpu.py --knowledge_base data/rag_examples/knowledge_base
# RAG fine-tuning of the tiny CPU hybrid (minutes on a laptop; for tests and the workflow's smoke run).
# Literal assignments only; every key is a flag of scripts.rag_finetune; later flags override.
# The model comes from <base_dir>/base_checkpoints/d4, trained with configs/base_tiny_cpu.py:
# 4 layers "T,T,M,M", n_embd 128, 4 heads, max_seq_len 512, on the configs/tok_tiny_cpu.py tokenizer.

source = "base"                # no mid-training on CPU: fine-tune the base model directly
model_tag = "d4"
retriever_type = "bm25"        # no embedding model needed
top_k = 2                      # bm25 recall@1 is 0.90 on the synthetic world: 2 documents lose nothing
max_doc_length = 80            # words; synthetic documents are ~45 words, 2 of them + prompt ~220 tokens
max_seq_len = 256              # every example fits; half the cost of 512 per step
device_batch_size = 8
grad_accum_steps = 1
num_epochs = 1
max_steps = 250                # ~2.5 min on a quiet 2-core CPU (measured 158 s); -1 = a full epoch
lr = 0.003
warmup_steps = 10
init_lr_frac = 1.0             # tiny model trained from scratch: full learning rate
eval_every = 100
eval_examples = 64             # fixed validation subset per measurement
run = "rag_tiny_cpu"
device = "cpu"
seed = 0
