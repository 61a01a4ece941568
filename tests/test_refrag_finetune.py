"""scripts.refrag_finetune end to end on a tiny synthetic world: warm-up + reward phase under torchrun (gloo)."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Synthetic two-hop world (30 entities), a simple-retriever KB, a tokenizer and a tiny T,M base model."""
    from nanochat.checkpoint_manager import save_checkpoint
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.retrieval import build_knowledge_base
    from nanochat.synthetic import generate_world
    from nanochat.tokenizer import Tokenizer
    root = tmp_path_factory.mktemp("refrag")
    data = root / "data"
    generate_world(data, seed=0, n_entities=30)
    build_knowledge_base(data / "documents.jsonl", data / "kb", retriever_types=("simple",), show_progress=False)
    texts = [json.loads(l)["content"] for l in (data / "documents.jsonl").read_text().splitlines()]
    tok = Tokenizer.train_from_iterator(texts * 2, vocab_size=400)
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=384, vocab_size=tok.get_vocab_size(), n_layer=2, n_head=2, n_kv_head=2, n_embd=32,
                    block_pattern="T,M", mamba_version=1)
    model = GPT(cfg)
    model.init_weights()
    base = root / "base"
    save_checkpoint(base / "base_checkpoints" / "t2", 0, model.state_dict(), None,
                    {"model_config": dataclasses.asdict(cfg), "lr": 3e-3}, tokenizer=tok)
    return {"root": root, "data": data, "base": base}


def _run(cmd, env_base, timeout=120):
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(env_base), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.mark.slow
def test_torchrun_two_ranks_warmup_and_rewards(world):
    from nanochat.checkpoint_manager import load_model
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "scripts.refrag_finetune", "--knowledge_base", str(world["data"] / "kb"), "--source", "base",
           "--model_tag", "t2", "--output_tag", "tiny", "--retriever_type", "simple", "--max_hops", "2",
           "--top_k_per_hop", "2", "--use_rewards", "true", "--device_batch_size", "2", "--max_seq_len", "384",
           "--max_doc_length", "40", "--max_steps", "3", "--rl_steps", "2", "--num_samples", "3",
           "--max_new_tokens", "8", "--eval_questions", "4", "--eval_every", "-1", "--device", "cpu"]
    _run(cmd, world["base"])
    ckpt = world["base"] / "refrag_checkpoints" / "tiny"
    done = json.loads((ckpt / "done.json").read_text())
    assert done["warmup_steps"] == 3 and done["rl_steps"] == 2 and done["step"] == 5
    assert (ckpt / "rewards.png").stat().st_size > 1000
    log = pd.read_csv(ckpt / "rewards.csv")
    assert list(log["phase"]) == ["warmup"] * 3 + ["reward"] * 2
    rl = log[log["phase"] == "reward"]
    assert rl["reward"].between(0, 1).all() and rl["f1"].between(0, 1).all()
    assert rl["heldout_em"].notna().iloc[-1]  # held-out EM logged beside the rewards
    # the warm-up data is multi_hop conversations built from the precomputed multi-hop table
    manifest = json.loads((ckpt / "data" / "dataset" / "manifest.json").read_text())
    assert manifest["kind"] == "multi_hop" and manifest["splits"]["train"]["n_examples"] > 0
    table = pd.read_parquet(ckpt / "data" / "retrieval_multihop.parquet")
    assert set(table["hop"]) == {1, 2}
    model, tok, meta = load_model(str(ckpt), device="cpu", phase="eval")
    assert meta["step"] == 5 and meta["mode"] == "refrag" and meta["max_hops"] == 2
    with torch.no_grad():
        assert model(torch.tensor([[tok.get_bos_token_id(), 5, 6]])).shape[-1] == model.config.vocab_size


def test_cli_rejects_zero_temperature(world, capsys):
    from scripts.refrag_finetune import main
    with pytest.raises(SystemExit, match="temperature"):
        main(["--knowledge_base", str(world["data"] / "kb"), "--temperature", "0", "--device", "cpu"])
