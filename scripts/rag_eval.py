"""Held-out RAG evaluation (thin entry point; the logic is nanochat.rag.evaluation).

    python -m scripts.rag_eval --knowledge_base KB --retrieval retrieval.parquet --queries_test F \
        --source rag --model_tag TAG --output DIR

Writes DIR/metrics.json (em, f1, em_no_retrieval, em_oracle, citation_precision, citation_recall,
unsupported_rate, retrieval_recall@k, ...), DIR/per_question.csv and DIR/*.png.
"""
from nanochat.rag.evaluation import main

if __name__ == "__main__":
    main()
