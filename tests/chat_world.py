"""A tiny world for the chat tests (terminal, API, browser): the 30-entity synthetic world, a simple-retriever KB,
a tiny T,M model with a copy head fine-tuned briefly as a RAG model (long enough that it answers with a
citation such as "1924 [1]"), and the same weights saved as a REFRAG checkpoint whose meta asks for 2 hops of
1 document with the titles strategy (context extended to 512 tokens). Built once per test session (about a minute on 2 cores)."""
import dataclasses
import json
import shutil
from pathlib import Path

import torch

RAG_STEPS_EPOCHS = 30  # 10 steps an epoch: 300 steps of batch 8


def build_chat_world(root: Path) -> dict:
    from nanochat.checkpoint_manager import save_checkpoint
    from nanochat.gpt import GPT, GPTConfig
    from scripts.rag_finetune import main as rag_finetune
    from tests.test_rag_finetune import make_world
    w = make_world(root)
    from nanochat.tokenizer import Tokenizer
    tok = Tokenizer.from_directory(w["data"] / "tok")
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=256, vocab_size=tok.get_vocab_size(), n_layer=2, n_head=2, n_embd=32,
                    block_pattern="T,M", mamba_version=1, copy_head=True)
    model = GPT(cfg)
    model.init_weights()
    save_checkpoint(w["base"] / "base_checkpoints" / "copy", 0, model.state_dict(), None,
                    {"model_config": dataclasses.asdict(cfg), "lr": 3e-3, "model_tag": "copy"}, tokenizer=tok)
    rag_finetune(["--knowledge_base", str(w["kb"]), "--source", "base", "--model_tag", "copy", "--output_tag", "tiny",
                  "--dataset", str(w["data"] / "dataset"), "--top_k", "2", "--max_seq_len", "256",
                  "--max_doc_length", "40", "--device_batch_size", "8", "--num_epochs", str(RAG_STEPS_EPOCHS),
                  "--init_lr_frac", "1.0", "--eval_every", "-1", "--eval_examples", "4", "--device", "cpu",
                  "--num_threads", "1", "--base_tasks", "none", "--base_dir", str(w["base"])])
    rag_dir = w["base"] / "rag_checkpoints" / "tiny"
    refrag_dir = w["base"] / "refrag_checkpoints" / "tiny"
    shutil.copytree(rag_dir, refrag_dir)
    for meta_path in refrag_dir.glob("meta_*.json"):
        meta = json.loads(meta_path.read_text())
        meta.update(mode="refrag", max_hops=2, top_k_per_hop=1, hop_strategy="titles")
        meta["model_config"]["sequence_len"] = 512  # two hops need the room (refrag_finetune --max_seq_len extends it too)
        meta_path.write_text(json.dumps(meta))
    questions = [json.loads(line) for line in (w["data"] / "queries_test.jsonl").read_text().splitlines()]
    return {**w, "questions": questions}
