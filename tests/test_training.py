"""nanochat.train.loop: loss masking, the sharded loader and its cursor, resume state, logging.

    python -m pytest -q tests/test_training.py
"""
import math
import random

import numpy as np
import pytest

from nanochat.common import read_csv_columns
import torch

from nanochat.train import data as train_data
from nanochat.train import loop as T
from nanochat.train import progress
from nanochat.train import resume


def tiny_model(pattern="T,M", vocab=64, seed=0, **options):
    from nanochat.gpt import GPT, GPTConfig
    torch.manual_seed(seed)
    cfg = GPTConfig(sequence_len=64, vocab_size=vocab, n_layer=len(pattern.split(",")), n_head=2, n_embd=32,
                    block_pattern=pattern, mamba_version=1, **options)
    model = GPT(cfg)
    model.init_weights()
    torch.nn.init.normal_(model.lm_head.weight, std=0.05)  # non-trivial logits so losses differ
    return model


def test_lr_schedule_warmup_flat_warmdown():
    lrs = [T.lr_multiplier(s, 10, warmup_steps=2, warmdown_frac=0.5, final_frac=0.0) for s in range(10)]
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2:6] == [1.0] * 4
    assert all(a > b for a, b in zip(lrs[5:], lrs[6:]))  # strictly decreasing warmdown
    assert T.lr_multiplier(10, 10, warmdown_frac=1.0) == pytest.approx(0.0)


def test_mask_to_targets_only_assistant_tokens():
    ids = [1, 10, 11, 12, 20, 21, 2]
    mask = [0, 0, 0, 0, 1, 1, 1]  # assistant content + <|assistant_end|>
    x, y = T.example_to_tensors(ids, mask, max_seq_len=16)
    assert x.tolist() == ids[:-1]
    assert y.tolist() == [-1, -1, -1, 20, 21, 2]
    xb, yb = T.collate([(ids, mask), (ids[:4], mask[:4])], max_seq_len=16, pad_id=0)
    assert xb.shape == (2, 6) and yb[1].tolist() == [-1] * 6  # padding and prompt never supervised


def test_loss_ignores_prompt_tokens_and_depends_on_answer():
    """Changing prompt-side targets changes nothing; changing an answer token changes the loss."""
    model = tiny_model()
    ids = list(range(3, 23))
    mask = [0] * 15 + [1] * 5
    x, y = T.collate([(ids, mask)], 32)
    base = model(x, y).item()
    other_prompt = T.collate([([5] * 15 + ids[15:], mask)], 32)[1]
    assert torch.equal(other_prompt, y)  # prompt tokens never reach the targets at all
    y2 = y.clone()
    y2[0, -1] = (y2[0, -1] + 1) % 64
    assert abs(model(x, y2).item() - base) > 1e-6


# upstream nanochat's Jul-2026 features (value embeddings, smear, backout, lambdas, a padded vocabulary): the fast
# path must compute them too, or fine-tuning an upstream model would train a different function than it runs
UPSTREAM_2026 = dict(rotary_base=100000.0, qk_scale=1.2, window_pattern="SL", value_embeds=True, smear=True,
                     backout=True, layer_lambdas=True, pad_vocab_size_to=48)


@pytest.mark.parametrize("options", [{}, UPSTREAM_2026], ids=["project", "upstream-2026"])
def test_supervised_loss_matches_gpt_forward(options):
    model = tiny_model("T,M,T", **options)
    if options:  # the neutral init of the extra scalars would hide a path that skips them
        with torch.no_grad():
            model.smear_lambda.fill_(0.5)
            model.backout_lambda.fill_(0.3)
            model.x0_lambdas.fill_(0.2)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 64, (3, 40), generator=g)
    y = torch.randint(0, 64, (3, 40), generator=g)
    y[:, :30] = -1
    y[1] = -1  # one row with nothing supervised
    fast = T.SupervisedLoss(model)
    for red in ("mean", "sum"):
        ref, got = model(x, y, loss_reduction=red), fast(x, y, loss_reduction=red)
        print(f"{red}: ref {ref.item():.6f} fast {got.item():.6f} diff {abs(ref - got).item():.2e}")
        assert torch.allclose(ref, got, rtol=1e-5, atol=1e-6)
    fast(x, y).backward()  # gradients flow through the fast path
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


def _examples(n):
    return [(np.arange(i, i + 8) % 50, np.ones(8, np.uint8)) for i in range(n)]


def test_loader_ranks_disjoint_and_cover_the_global_batch():
    ex = _examples(20)
    loaders = [T.ShardLoader(ex, batch_size=3, max_seq_len=8, seed=7, rank=r, world_size=2) for r in range(2)]
    assert loaders[0].steps_per_epoch == 3  # 20 // 6, tail dropped
    seen = []
    for _ in range(3):
        firsts = [set(ld.next_batch()[0][:, 0].tolist()) for ld in loaders]
        assert not (firsts[0] & firsts[1])
        seen += [v for f in firsts for v in f]
    assert len(set(seen)) == 18
    # next epoch: a different permutation, cursor wraps
    nxt = loaders[0].next_batch()
    assert loaders[0].cursor.epoch == 1 and loaders[0].cursor.position == 6 and nxt[0].shape == (3, 7)


def test_loader_cursor_resumes_identically():
    ex = _examples(17)
    full = T.ShardLoader(ex, 4, 8, seed=3)
    ref = [full.next_batch()[0] for _ in range(9)]
    part = T.ShardLoader(ex, 4, 8, seed=3)
    for _ in range(5):
        part.next_batch()
    resumed = T.ShardLoader(ex, 4, 8, seed=3, cursor=T.Cursor(**part.cursor.to_dict()))
    for want in ref[5:]:
        assert torch.equal(resumed.next_batch()[0], want)


def test_loader_too_few_examples_is_a_clear_error():
    with pytest.raises(ValueError, match="device_batch_size"):
        T.ShardLoader(_examples(3), batch_size=2, max_seq_len=8, world_size=2)


def test_train_state_roundtrip(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    resume.save_train_state(tmp_path, 5, T.Cursor(2, 12))
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    state = resume.load_train_state(tmp_path, 5)
    resume.set_rng_state(state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want
    assert state["cursor"] == T.Cursor(2, 12) and state["step"] == 5
    with pytest.raises(FileNotFoundError, match="resume"):
        resume.load_train_state(tmp_path, 6)


def test_metrics_logger_drops_rows_after_resume_step(tmp_path):
    path = tmp_path / "metrics.csv"
    log = progress.MetricsLogger(path)
    for s in range(1, 6):
        log.log(step=s, loss=1.0 / s, lr=0.1)
    log = progress.MetricsLogger(path, resume_step=3)
    log.log(step=4, loss=9.0, val_loss=8.0)
    cols = read_csv_columns(path)
    assert cols["step"] == [1, 2, 3, 4] and cols["loss"][3] == 9.0
    assert math.isnan(cols["val_loss"][0]) and cols["val_loss"][3] == 8.0


def test_base_tasks_default_warns_explicit_errors(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing cached here
    tok = None  # never used: nothing is found
    assert train_data.load_base_tasks(None, -1, 100, tok, 128) == []
    assert "SmolTalk is not cached" in caplog.text
    with pytest.raises(FileNotFoundError, match="not cached"):
        train_data.load_base_tasks("SmolTalk", 10, 100, tok, 128)
    assert train_data.load_base_tasks("none", 10, 100, tok, 128) == []


def test_query_file_resolution(tmp_path):
    kb = tmp_path / "kb"
    kb.mkdir()
    assert train_data.resolve_query_files(kb) == ({}, "documents")
    (tmp_path / "queries_train.jsonl").write_text('{"id": "q", "question": "x?", "answers": ["y"]}\n')
    files, how = train_data.resolve_query_files(kb)
    assert files == {"train": tmp_path / "queries_train.jsonl"} and "beside the KB" in how
    with pytest.raises(FileNotFoundError, match="queries_train"):
        train_data.resolve_query_files(kb, queries_train=tmp_path / "missing.jsonl")
    lines = [f'{{"id": "q{i}", "question": "x{i}?", "answers": ["y"]}}' for i in range(10)]
    (tmp_path / "q.jsonl").write_text("\n".join(lines) + "\n")
    split = train_data.split_train_val(tmp_path / "q.jsonl", tmp_path / "w", seed=0)
    got = {s: split[s].read_text().splitlines() for s in ("train", "val")}
    assert len(got["val"]) == 1 and sorted(got["train"] + got["val"]) == sorted(lines)
