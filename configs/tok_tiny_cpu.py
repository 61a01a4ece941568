# Read by: python -m scripts.tok_train configs/tok_tiny_cpu.py --knowledge_base data/rag_examples/knowledge_base
# A small BPE vocabulary for the tiny CPU models (configs/base_tiny_cpu.py).
# Literal assignments only; every key is a flag of scripts.tok_train; later flags override.

vocab_size = 2048              # includes 256 byte tokens and 17 special tokens
