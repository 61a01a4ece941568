"""Held-out REFRAG evaluation (thin entry point; the logic is nanochat.rag.refrag_eval).

    python -m scripts.refrag_eval --knowledge_base KB --retrieval multihop.parquet --queries_test F \
        --model_tag REFRAG_TAG --rag_model_tag RAG_TAG --rag_retrieval single.parquet --output DIR

REFRAG vs RAG vs no retrieval on the same questions: EM/F1/reward per condition, EM by hop count,
per-hop retrieval recall, the REFRAG-minus-RAG EM gain, and the training reward curve.
"""
from nanochat.rag.refrag_eval import main

if __name__ == "__main__":
    main()
