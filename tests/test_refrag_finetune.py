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
    from nanochat.data.synthetic import generate_world
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
    return {"root": root, "data": data, "base": base, "tok": tok}


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


def test_policy_gradient_only_on_sampled_tokens_and_group_advantages():
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.train.reward_phase import group_advantages, policy_gradient_batch, policy_gradient_loss
    adv = group_advantages([1.0, 0.0, 0.5])
    assert torch.allclose(adv, torch.tensor([0.5, -0.5, 0.0])) and group_advantages([0.3, 0.3]).abs().sum() == 0
    prompt, samples = [1, 2, 3, 4], [[7, 8, 9], [7]]
    x, y = policy_gradient_batch(prompt, samples, pad_id=0)
    assert x.shape == y.shape == (2, 6)
    assert y[0].tolist() == [-1, -1, -1, 7, 8, 9] and y[1].tolist() == [-1, -1, -1, 7, -1, -1]
    assert x[0].tolist() == [1, 2, 3, 4, 7, 8]
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=16, vocab_size=16, n_layer=1, n_head=1, n_kv_head=1, n_embd=8, block_pattern="T"))
    model.init_weights()
    loss = policy_gradient_loss(model, x, y, torch.tensor([1.0, -1.0]))
    loss.backward()
    assert torch.isfinite(loss) and model.lm_head.weight.grad.abs().sum() > 0
    model.zero_grad()
    policy_gradient_loss(model, x, y, torch.zeros(2)).backward()  # zero advantage: no update
    assert model.lm_head.weight.grad.abs().sum() == 0


def test_heldout_comparison_hop_recall_and_plot(tmp_path):
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.rag.conversation import ChunkStore
    from nanochat.train.reward_phase import reward_log
    from nanochat.rag.refrag_eval import compare_conditions
    from nanochat.rag.plots import plot_reward_curve
    from nanochat.rag.multihop_data import prompt_items
    from nanochat.tokenizer import Tokenizer
    chunks = pd.DataFrame([{"id": f"d{i}#0", "doc_id": f"d{i}", "title": f"T{i}", "content": f"fact number {i} is here"}
                           for i in range(4)])
    table = pd.DataFrame([
        {"split": "test", "query_id": "q1", "hop": 1, "hop_query": "q one", "rank": 1, "chunk_id": "d0#0", "doc_id": "d0", "score": 2.0},
        {"split": "test", "query_id": "q1", "hop": 2, "hop_query": "q one T0", "rank": 1, "chunk_id": "d1#0", "doc_id": "d1", "score": 1.0},
        {"split": "test", "query_id": "q2", "hop": 1, "hop_query": "q two", "rank": 1, "chunk_id": "d2#0", "doc_id": "d2", "score": 1.0}])
    queries = [{"id": "q1", "question": "q one", "answers": ["fact"], "doc_ids": ["d0", "d1"], "hops": 2},
               {"id": "q2", "question": "q two", "answers": ["here"], "doc_ids": ["d2", "d3"], "hops": 2}]
    items = prompt_items(queries, table, ChunkStore(chunks), "test", None, single_table=table, top_k_single=2)
    assert [len(i["single_documents"]) for i in items] == [1, 1] and items[0]["hop_doc_ids"] == [["d0"], ["d1"]]
    tok = Tokenizer.train_from_iterator(["fact number is here q one two"] * 5, vocab_size=300)
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=512, vocab_size=tok.get_vocab_size(), n_layer=2, n_head=2, n_kv_head=2,
                          n_embd=16, block_pattern="T,M", mamba_version=1))
    model.init_weights()
    model.eval()
    metrics, rows = compare_conditions({"refrag": (model, tok, "refrag"), "rag": (model, tok, "rag"),
                                        "no_retrieval": (model, tok, "no_retrieval")}, items, max_tokens=4, max_hops=2)
    assert set(metrics) == {"refrag", "rag", "no_retrieval"} and len(rows) == 6
    hr = metrics["refrag"]["hop_recall"]
    assert hr["recall_hop1"] == pytest.approx(0.5) and hr["recall_hop2"] == pytest.approx(0.75)
    assert hr["all_gold_hop1"] == 0.0 and hr["all_gold_hop2"] == 0.5  # q1 needs both hops, q2 never complete
    assert set(metrics["rag"]["em_by_hops"]) == {"2"}
    log = reward_log(tmp_path / "r.csv")
    for step, phase, reward, em in [(1, "warmup", None, 0.1), (2, "reward", 0.2, None), (3, "reward", 0.4, 0.3)]:
        log.append(step=step, phase=phase, reward=reward, heldout_em=em)
    with pytest.raises(KeyError, match="not among"):
        log.append(step=4, reward_v2=0.5)  # a column nobody declared fails loudly instead of vanishing
    assert plot_reward_curve(tmp_path / "r.csv", tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def _args(world, tag, *extra):
    return ["--knowledge_base", str(world["data"] / "kb"), "--source", "base", "--model_tag", "t2", "--output_tag", tag,
            "--base_dir", str(world["base"]), "--retriever_type", "simple", "--max_hops", "3", "--top_k_per_hop", "2",
            "--use_rewards", "true", "--device_batch_size", "2", "--max_doc_length", "40", "--max_steps", "3",
            "--rl_steps", "2", "--num_samples", "2", "--max_new_tokens", "6", "--eval_questions", "2",
            "--eval_every", "-1", "--device", "cpu", *extra]


@pytest.mark.slow
def test_kill_and_resume_in_both_phases_with_prompts_too_long(world):
    """Stop after warm-up step 2 and after reward step 4 (as if killed), resume twice: one run's 5 steps, no crash
    although 3 hops of entity-expanded queries do not fit max_seq_len 256 unshortened."""
    from nanochat.checkpoint_manager import load_model
    from scripts.refrag_finetune import main
    tiny = ["--max_seq_len", "256"]
    ckpt = main(_args(world, "resume", *tiny, "--stop_at_step", "2"))
    assert not (ckpt / "done.json").exists() and sorted(p.name for p in ckpt.glob("model_*.pt")) == ["model_000002.pt"]
    main(_args(world, "resume", *tiny, "--resume", "true", "--stop_at_step", "4"))
    assert not (ckpt / "done.json").exists() and (ckpt / "model_000004.pt").exists()
    main(_args(world, "resume", *tiny, "--resume", "true"))
    done = json.loads((ckpt / "done.json").read_text())
    assert done["step"] == 5 and done["warmup_steps"] == 3 and done["rl_steps"] == 2 and done["resumed_from"] == 4
    log = pd.read_csv(ckpt / "rewards.csv")
    assert list(log["step"]) == [1, 2, 3, 4, 5] and list(log["phase"]) == ["warmup"] * 3 + ["reward"] * 2
    manifest = json.loads((ckpt / "data" / "dataset" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["n_examples"] > 0  # long ones shortened (or skipped and counted), none crash
    model, tok, meta = load_model(str(ckpt), device="cpu", phase="eval")
    assert meta["step"] == 5 and meta["warmup_steps"] == 3


def test_fit_prompt_shortens_hop_queries_then_skips(world):
    from nanochat.rag.multihop_data import encode_multihop, fit_items
    from nanochat.rag.conversation import multihop_conversation
    tok = world["tok"]
    long_q = " ".join(["Zentil Morland Quix Vora"] * 30)
    msg = {"role": "retrieval", "multi_hop": True, "hops": [
        {"hop": 1, "query": "where was he born", "documents": [{"title": "A", "content": "word " * 30}]},
        {"hop": 2, "query": long_q, "documents": [{"title": "B", "content": "word " * 30}]}]}
    item = {"id": "x", "question": "where was he born", "answers": ["a"], "message": msg}
    too_long = {**item, "id": "y", "question": long_q}
    kept, skipped = fit_items(tok, [item, too_long], 160)  # system prompt alone: ~75 tokens here
    assert [k["id"] for k in kept] == ["x"] and skipped == 1
    assert len(kept[0]["message"]["hops"][1]["query"].split()) < len(long_q.split())  # hop query cut, not a crash
    conv = multihop_conversation(item["question"], msg, "a [1]")
    ids, mask = encode_multihop(tok, conv, [1], 200, 40)
    assert len(ids) <= 200 and sum(mask) > 0
    assert encode_multihop(tok, multihop_conversation(long_q, msg, "a [1]"), [1], 200, 40) is None


def test_prompts_shorten_every_document_before_dropping_the_last_hop_and_keep_the_answer(world):
    """A two-hop answer is in the last hop's document: fitting a prompt must not drop it (the tokenizer alone
    would), and a training example whose shortened cited document lost the answer is skipped."""
    from nanochat.rag.multihop_data import encode_multihop, fit_prompt
    from nanochat.rag.conversation import message_documents, multihop_conversation
    tok = world["tok"]
    filler = " ".join(f"Sentence {i} says little." for i in range(12))
    msg = {"role": "retrieval", "multi_hop": True, "hops": [
        {"hop": 1, "query": "q", "documents": [{"title": "A", "content": f"Acme is made by Zorn. {filler}"}]},
        {"hop": 2, "query": "q Zorn", "documents": [{"title": "B", "content": f"Zorn was founded in 1901. {filler}"}]}]}
    item = {"id": "x", "question": "When was the maker of Acme founded?", "answers": ["1901"], "message": msg}
    full, _ = tok.render_for_completion(multihop_conversation(item["question"], msg), max_tokens=10_000, on_overflow="report")
    ids, fitted = fit_prompt(tok, item, len(full) - 20)
    docs = message_documents(fitted)
    assert len(ids) <= len(full) - 20 and len(docs) == 2 and "1901" in docs[1]["content"]
    assert len(docs[0]["content"].split()) < len(msg["hops"][0]["documents"][0]["content"].split())
    late = {**msg, "hops": [msg["hops"][0], {**msg["hops"][1], "documents": [
        {"title": "B", "content": f"{filler} Zorn was founded in 1901."}]}]}  # the answer is the last sentence
    conv = multihop_conversation(item["question"], late, "1901 [2]")
    full_ids, _, _ = tok.render_conversation(conv, max_tokens=10_000, on_overflow="report")
    assert encode_multihop(tok, conv, [2], 10_000, None, ["1901"]) is not None
    assert encode_multihop(tok, conv, [2], len(full_ids) - 20, None, ["1901"]) is None  # shortening cut 1901
    assert encode_multihop(tok, conv, [2], len(full_ids) - 20, None) is not None  # without answers: not checked


@pytest.mark.slow
def test_workflow_multi_hop_dataset_is_trained_on_as_given_and_equals_the_standalone_build(world, tmp_path):
    """The workflow's build_dataset makes a refrag run's multi_hop shards (python -m nanochat.rag.dataset --mode
    refrag): refrag_finetune trains on them as given (nothing rebuilt in the training job), and they hold exactly
    the examples the script builds for itself without --dataset."""
    from nanochat.rag import dataset
    from nanochat.rag.shards import load_dataset_shards
    from nanochat.retrieval.precompute import precompute_retrieval
    from scripts.refrag_finetune import main
    data = world["data"]
    files = {"train": str(data / "queries_train.jsonl"), "val": str(data / "queries_val.jsonl")}
    table = tmp_path / "mh.parquet"
    precompute_retrieval(data / "kb", "simple", files, 2, table, max_hops=2, top_k_per_hop=2, strategy="entities")
    world["tok"].save(tmp_path / "tok")
    dataset.main(["--mode", "refrag", "--knowledge_base", str(data / "kb"), "--retrieval", str(table),
                  "--queries_train", files["train"], "--queries_val", files["val"], "--tokenizer", str(tmp_path / "tok"),
                  "--top_k", "2", "--max_seq_len", "384", "--max_doc_length", "40", "--max_hops", "2",
                  "--hop_strategy", "entities", "--output", str(tmp_path / "wf")])
    manifest = json.loads((tmp_path / "wf" / "manifest.json").read_text())
    assert manifest["kind"] == "multi_hop" and manifest["retrieval"] == str(table) and manifest["max_hops"] == 2
    common = ["--knowledge_base", str(data / "kb"), "--source", "base", "--model_tag", "t2", "--base_dir",
              str(world["base"]), "--retrieval", str(table), "--queries_train", files["train"], "--queries_val",
              files["val"], "--max_hops", "2", "--top_k_per_hop", "2", "--use_rewards", "false", "--max_steps", "1",
              "--max_seq_len", "384", "--max_doc_length", "40", "--eval_questions", "1", "--max_new_tokens", "4",
              "--device", "cpu"]
    ckpt = main([*common, "--output_tag", "wf", "--dataset", str(tmp_path / "wf")])
    assert not (ckpt / "data").exists() and json.loads((ckpt / "done.json").read_text())["step"] == 1
    ids, _ = load_dataset_shards(str(tmp_path / "wf"), "train")[0]
    hop_start = world["tok"].encode_special("<|hop_start|>")
    assert list(ids).count(hop_start) == 2  # two hops rendered, not one flattened document list
    standalone = main([*common, "--output_tag", "standalone"]) / "data" / "dataset"
    for split in ("train", "val"):
        a, b = load_dataset_shards(str(tmp_path / "wf"), split), load_dataset_shards(str(standalone), split)
        assert len(a) == len(b) > 0
        assert all(list(x[0]) == list(y[0]) and list(x[1]) == list(y[1]) for x, y in zip(a, b))


def test_refrag_eval_cli_compares_refrag_rag_and_no_retrieval_on_the_same_questions(world, tmp_path):
    """scripts.refrag_eval: one REFRAG and one RAG checkpoint, every condition on the same test questions, the RAG
    model shown max_hops x top_k_per_hop single-hop documents (equal budget), gains = differences of EMs."""
    import shutil
    from nanochat.retrieval.precompute import precompute_retrieval
    from scripts.refrag_eval import main as refrag_eval
    from scripts.refrag_finetune import main as refrag_finetune
    data, base = world["data"], world["base"]
    files = {"train": str(data / "queries_train.jsonl"), "val": str(data / "queries_val.jsonl"),
             "test": str(data / "queries_test.jsonl")}
    multi, single = tmp_path / "mh.parquet", tmp_path / "sh.parquet"
    precompute_retrieval(data / "kb", "simple", files, 2, multi, max_hops=2, top_k_per_hop=1, strategy="focused")
    precompute_retrieval(data / "kb", "simple", files, 4, single, max_hops=1)
    refrag_finetune(["--knowledge_base", str(data / "kb"), "--source", "base", "--model_tag", "t2", "--output_tag", "ev",
                     "--base_dir", str(base), "--retrieval", str(multi), "--queries_train", files["train"],
                     "--queries_val", files["val"], "--max_hops", "2", "--top_k_per_hop", "1", "--use_rewards", "true",
                     "--rl_steps", "1", "--num_samples", "2", "--max_steps", "1", "--max_seq_len", "512",
                     "--max_doc_length", "40", "--eval_questions", "1", "--max_new_tokens", "4", "--device", "cpu"])
    meta = json.loads(sorted((base / "refrag_checkpoints" / "ev").glob("meta_*.json"))[-1].read_text())
    assert meta["model_config"]["sequence_len"] == 512  # the base model's 384 extended by fine-tuning
    shutil.copytree(base / "base_checkpoints" / "t2", base / "rag_checkpoints" / "ev_rag")  # an (untrained) RAG model
    out = tmp_path / "eval"
    m = refrag_eval(["--knowledge_base", str(data / "kb"), "--retrieval", str(multi), "--queries_test", files["test"],
                     "--model_tag", "ev", "--rag_model_tag", "ev_rag", "--rag_retrieval", str(single),
                     "--base_dir", str(base), "--max_questions", "6", "--max_tokens", "4", "--device", "cpu",
                     "--output", str(out)])
    assert set(m["conditions"]) == {"refrag", "rag", "no_retrieval"} and m["rag_top_k"] == 2
    assert all(c["n"] == 6 for c in m["conditions"].values())
    rows = pd.read_csv(out / "per_question.csv")
    assert len(rows) == 18 and rows.groupby("label")["id"].apply(list).map(tuple).nunique() == 1  # same questions
    for h, by in m["em_by_hops"].items():
        assert set(by) == {"refrag", "rag", "no_retrieval"}
        gain = m["em_gain_over_rag"][f"{h}-hop"]
        assert gain == pytest.approx(by["refrag"] - by["rag"], abs=1e-4)
    assert m["em_gain_over_rag"]["all"] == pytest.approx(m["em"] - m["em_rag"], abs=1e-4)
    assert set(m["hop_recall"]) == {"recall_hop1", "all_gold_hop1", "recall_hop2", "all_gold_hop2"}
    assert m["kb_id"] and json.loads((out / "metrics.json").read_text())["model_tag"] == "ev"
    assert (out / "em_by_hops.png").read_bytes()[:4] == b"\x89PNG" and (out / "rewards.png").is_file()
    # --rag_eval: the RAG run's own evaluation (same questions, same document count) supplies the rag and
    # no_retrieval answers; they are scored again here and give the same EM as generating them
    from nanochat.rag.evaluation import main as rag_eval
    rag_out = tmp_path / "rag_eval"
    rag_eval(["--knowledge_base", str(data / "kb"), "--retrieval", str(single), "--queries_test", files["test"],
              "--source", "rag", "--model_tag", "ev_rag", "--base_dir", str(base), "--top_k", "2",
              "--max_questions", "6", "--max_tokens", "4", "--max_doc_length", "40", "--device", "cpu",
              "--output", str(rag_out)])
    m2 = refrag_eval(["--knowledge_base", str(data / "kb"), "--retrieval", str(multi), "--queries_test", files["test"],
                      "--model_tag", "ev", "--rag_model_tag", "ev_rag", "--rag_retrieval", str(single),
                      "--rag_eval", str(rag_out), "--base_dir", str(base), "--max_questions", "6", "--max_tokens", "4",
                      "--device", "cpu", "--output", str(tmp_path / "eval2")])
    assert m2["rag_answers_from"] == str(rag_out) and m2["conditions"]["rag"]["n"] == 6
    assert m2["em_rag"] == pytest.approx(m["em_rag"]) and m2["em"] == pytest.approx(m["em"])
    # a RAG evaluation that showed a different number of documents is not reused
    m3 = refrag_eval(["--knowledge_base", str(data / "kb"), "--retrieval", str(multi), "--queries_test", files["test"],
                      "--model_tag", "ev", "--rag_model_tag", "ev_rag", "--rag_retrieval", str(single), "--rag_top_k", "3",
                      "--rag_eval", str(rag_out), "--base_dir", str(base), "--max_questions", "6", "--max_tokens", "4",
                      "--device", "cpu", "--output", str(tmp_path / "eval3")])
    assert m3["rag_answers_from"] is None and m3["rag_top_k"] == 3
