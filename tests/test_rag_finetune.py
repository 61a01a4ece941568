"""scripts.rag_finetune on a tiny synthetic world: torchrun (gloo, 2 ranks), resume after a kill, guide errors.

    python -m pytest -q tests/test_rag_finetune.py
"""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def make_world(root: Path, pattern="T,M"):
    """30-entity synthetic world, simple-retriever KB, BPE tokenizer, untrained tiny base model, RAFT shards."""
    from nanochat.retrieval import precompute
    from nanochat.rag import dataset
    from nanochat.checkpoint_manager import save_checkpoint
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.retrieval import build_knowledge_base
    from nanochat.data.synthetic import generate_world
    from nanochat.tokenizer import Tokenizer
    data = root / "data"
    generate_world(data, seed=0, n_entities=30)
    build_knowledge_base(data / "documents.jsonl", data / "kb", retriever_types=("simple",), show_progress=False)
    texts = [json.loads(l)["content"] for l in (data / "documents.jsonl").read_text().splitlines()]
    tok = Tokenizer.train_from_iterator(texts * 2, vocab_size=400)
    tok.save(data / "tok")
    base = root / "base"
    for tag, pat in (("t2", pattern), ("pure", "T,T")):
        torch.manual_seed(0)
        cfg = GPTConfig(sequence_len=256, vocab_size=tok.get_vocab_size(), n_layer=2, n_head=2, n_embd=32,
                        block_pattern=pat, mamba_version=1)
        model = GPT(cfg)
        model.init_weights()
        save_checkpoint(base / "base_checkpoints" / tag, 0, model.state_dict(), None,
                        {"model_config": dataclasses.asdict(cfg), "lr": 3e-3, "model_tag": tag}, tokenizer=tok)
    q = {s: data / f"queries_{s}.jsonl" for s in ("train", "val", "test")}
    precompute.main(["--knowledge_base", str(data / "kb"), "--retriever_type", "simple", "--queries",
                     *[f"{s}={p}" for s, p in q.items()], "--k_max", "5", "--output", str(data / "retrieval.parquet")])
    dataset.main(["--knowledge_base", str(data / "kb"), "--retrieval", str(data / "retrieval.parquet"),
               "--queries_train", str(q["train"]), "--queries_val", str(q["val"]), "--tokenizer", str(data / "tok"),
               "--top_k", "2", "--max_seq_len", "256", "--max_doc_length", "40", "--base_tasks", "none",
               "--output", str(data / "dataset")])
    return {"root": root, "data": data, "base": base, "kb": data / "kb"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("ragft"))


def finetune_args(world, tag, *extra):
    return ["--knowledge_base", str(world["kb"]), "--source", "base", "--model_tag", "t2", "--output_tag", tag,
            "--dataset", str(world["data"] / "dataset"), "--top_k", "2", "--max_seq_len", "256",
            "--device_batch_size", "4", "--lr", "3e-3", "--eval_every", "2", "--eval_examples", "8",
            "--device", "cpu", "--num_threads", "1", "--base_tasks", "none", "--base_dir", str(world["base"]), *extra]


@pytest.mark.slow
def test_torchrun_two_ranks_builds_data_and_checkpoint_loads(world):
    """No --dataset: the script precomputes retrieval and builds shards from queries beside the KB."""
    from nanochat.checkpoint_manager import load_model
    args = [a for a in finetune_args(world, "ddp", "--max_steps", "2") if a]
    i = args.index("--dataset")
    del args[i:i + 2]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "scripts.rag_finetune", *args, "--max_doc_length", "40"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "queries: files beside the KB" in r.stdout
    ckpt = world["base"] / "rag_checkpoints" / "ddp"
    done = json.loads((ckpt / "done.json").read_text())
    assert done["step"] == 2 and math_finite(done["metrics"]["val_loss"])
    assert (ckpt / "data" / "dataset" / "manifest.json").is_file() and (ckpt / "data" / "retrieval.parquet").is_file()
    model, tok, meta = load_model("rag", device="cpu", phase="eval", model_tag="ddp", base_dir=world["base"])
    assert meta["step"] == 2 and meta["kb_id"] and meta["data_manifest_sha256"] and meta["source_tag"] == "t2"
    assert (ckpt / "train_state_000002_rank1.pt").is_file()  # every rank saved its own RNG state
    with torch.no_grad():
        assert model(torch.tensor([[tok.get_bos_token_id(), 5]])).shape[-1] == model.config.vocab_size


def math_finite(x):
    return x is not None and x == x and abs(x) != float("inf")


@pytest.mark.slow
def test_resume_after_kill_continues_the_same_loss_curve(world):
    from nanochat.common import read_csv_columns
    from scripts.rag_finetune import main
    main(finetune_args(world, "full", "--max_steps", "6", "--save_every", "3"))
    main(finetune_args(world, "part", "--max_steps", "6", "--save_every", "3", "--stop_at_step", "3"))
    part = world["base"] / "rag_checkpoints" / "part"
    assert not (part / "done.json").exists() and (part / "model_000003.pt").is_file()
    main(finetune_args(world, "part", "--max_steps", "6", "--save_every", "3", "--resume"))
    full = read_csv_columns(world["base"] / "rag_checkpoints" / "full" / "metrics.csv")
    resumed = read_csv_columns(part / "metrics.csv")
    print("full   ", [round(v, 5) for v in full["loss"]])
    print("resumed", [round(v, 5) for v in resumed["loss"]])
    assert resumed["step"] == full["step"] == [1, 2, 3, 4, 5, 6]
    assert resumed["loss"] == pytest.approx(full["loss"], rel=1e-5, abs=1e-6)
    assert resumed["lr"] == pytest.approx(full["lr"])
    assert len(set(full["loss"])) > 3  # the curve actually moves
    a = torch.load(part / "model_000006.pt", weights_only=True)
    b = torch.load(world["base"] / "rag_checkpoints" / "full" / "model_000006.pt", weights_only=True)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


def test_pure_transformer_is_rejected_with_the_guides_message(world):
    from scripts.rag_finetune import main
    args = finetune_args(world, "x", "--max_steps", "1")
    args[args.index("t2")] = "pure"
    with pytest.raises(ValueError, match="RAG requires Mamba or hybrid models"):
        main(args)


def test_missing_knowledge_base_is_a_clear_error(world, tmp_path):
    from scripts.rag_finetune import main
    args = finetune_args(world, "x", "--max_steps", "1")
    args[args.index(str(world["kb"]))] = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="Knowledge base not found"):
        main(args)
