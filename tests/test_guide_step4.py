"""The user guide's Step 4 (use your RAG model) against a tiny fine-tuned model, and scripts.rag_chat.

    python -m pytest -q tests/test_guide_step4.py
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_rag_finetune import make_world

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = make_world(tmp_path_factory.mktemp("step4"))
    from scripts.rag_finetune import main
    main(["--knowledge_base", str(w["kb"]), "--source", "base", "--model_tag", "t2", "--output_tag", "tiny",
          "--dataset", str(w["data"] / "dataset"), "--top_k", "2", "--max_seq_len", "256", "--max_doc_length", "40",
          "--device_batch_size", "4", "--max_steps", "2", "--eval_every", "-1", "--eval_examples", "4",
          "--device", "cpu", "--num_threads", "1", "--base_tasks", "none", "--base_dir", str(w["base"])])
    return w


def test_guide_step4_snippet(world, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(world["base"]))
    # --- the guide's code, with device="cpu" and the KB path of this test
    from nanochat.checkpoint_manager import load_model
    from nanochat.retrieval import RetrievalManager
    from nanochat.engine import Engine

    model, tokenizer, meta = load_model("rag", device="cpu", phase="eval")
    retriever = RetrievalManager(retriever_type="simple", knowledge_base_path=str(world["kb"]))
    engine = Engine(model, tokenizer)

    query = "Where was the founder born?"
    documents = retriever.retrieve(query, top_k=2)
    conversation = {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Use the provided documents to answer accurately."},
            {"role": "retrieval", "documents": [doc.to_dict() for doc in documents]},
            {"role": "user", "content": query},
        ]
    }
    response, _ = engine.generate_from_conversation(conversation, max_tokens=8)
    # ---
    assert isinstance(response, str)
    assert meta["model_tag"] == "tiny" and meta["step"] == 2
    assert len(documents) == 2 and all(d.title for d in documents)


def test_rag_chat_reads_piped_input_until_quit(world):
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(world["base"]), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "scripts.rag_chat", "--knowledge_base", str(world["kb"]), "--retriever_type", "simple",
           "--source", "rag", "--model_tag", "tiny", "--max_tokens", "6", "--device", "cpu"]
    r = subprocess.run(cmd, cwd=REPO, env=env, input="Who founded the company?\n\nWhat is it known for?\nquit\nnever asked\n",
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("RAG Chat (type 'quit' to exit)")
    assert r.stdout.count("Assistant: ") == 2 and r.stdout.count("[Sources: ") == 2  # blank line skipped, stops at quit
    # end of input without quit also ends cleanly
    r = subprocess.run(cmd, cwd=REPO, env=env, input="Who founded it?\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.count("Assistant: ") == 1
