"""Fine-tuning loop pieces shared by scripts.rag_finetune and scripts.refrag_finetune."""
