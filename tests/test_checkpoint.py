"""Checkpoint layout, atomic saves, weights_only loads and load_model's source/tag/step selection."""
import dataclasses
import json
import os
import time

import pytest
import torch

from nanochat.checkpoint_manager import (build_model, find_largest_model, find_last_step, load_checkpoint,
                                         load_model, save_checkpoint)
from nanochat.tokenizer import Tokenizer

CORPUS = ["Return items within 30 days. Free shipping over $50. Mamba scans in linear time."] * 10


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train_from_iterator(CORPUS, vocab_size=300)


def tiny_model(pattern="T,T", version=1):
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.mamba import building_for
    torch.manual_seed(0)
    config = GPTConfig(sequence_len=32, vocab_size=320, n_layer=2, n_head=2, n_embd=32,
                       block_pattern=pattern, mamba_version=version, mamba_headdim=16)
    with building_for("cpu"):  # built and run on the CPU, also on a GPU host
        model = GPT(config)
    model.init_weights()
    return model


def save_tiny(base, source, tag, step, model, tok, optimizer=None, metrics=None):
    d = base / f"{source}_checkpoints" / tag
    meta = {"model_config": dataclasses.asdict(model.config), "metrics": metrics or {}}
    save_checkpoint(d, step, model.state_dict(), optimizer.state_dict() if optimizer else None, meta, tokenizer=tok)
    return d


@pytest.fixture
def base_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("pattern", ["T,T", "T,M"])
def test_round_trip_through_load_model(base_dir, tok, pattern):
    if "M" in pattern:
        pytest.importorskip("nanochat.mamba")
    model = tiny_model(pattern)
    d = save_tiny(base_dir, "rag", "d2", 5, model, tok, metrics={"val_loss": 1.5})
    assert sorted(p.name for p in d.iterdir()) == ["meta_000005.json", "model_000005.pt", "tokenizer"]
    meta = json.loads((d / "meta_000005.json").read_text())
    assert meta["step"] == 5 and meta["metrics"] == {"val_loss": 1.5}
    assert meta["model_config"]["block_pattern"] == pattern.split(",")
    assert meta["tokenizer"]["path"] == "tokenizer" and len(meta["tokenizer"]["sha256"]) == 64

    loaded, tok2, meta2 = load_model("rag", device="cpu", phase="eval")  # NANOCHAT_BASE_DIR
    assert not loaded.training and meta2 == meta
    assert tok2.encode("return items") == tok.encode("return items")
    idx = torch.randint(0, 300, (2, 16))
    model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(idx), model(idx), atol=1e-6)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    train_model, _, _ = load_model("rag", device="cpu", phase="train", model_tag="d2", step=5)
    assert train_model.training
    with pytest.raises(ValueError, match="phase"):
        load_model("rag", device="cpu", phase="serve")


def test_compiled_prefix_bf16_and_optimizer(tmp_path, tok):
    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 300, (1, 8)), targets=torch.randint(0, 300, (1, 8))).backward()
    opt.step()
    state = {"_orig_mod." + k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}  # compiled, bf16
    meta = {"model_config": dataclasses.asdict(model.config)}
    save_checkpoint(tmp_path, 3, state, opt.state_dict(), meta, tokenizer=tok, rank=0)
    save_checkpoint(tmp_path, 3, None, opt.state_dict(), meta, rank=1)  # other ranks: optimizer shard only
    assert (tmp_path / "optim_000003_rank0.pt").is_file() and (tmp_path / "optim_000003_rank1.pt").is_file()
    _, optim_data, _ = load_checkpoint(tmp_path, 3, "cpu", load_optimizer=True, rank=1)
    assert optim_data["param_groups"][0]["lr"] == 1e-3
    loaded, _, _ = build_model(tmp_path, 3, "cpu", "eval")
    w = loaded.transformer.wte.weight
    assert w.dtype == torch.float32 and torch.equal(w, model.transformer.wte.weight.to(torch.bfloat16).float())


def test_failure_mid_save_leaves_no_meta(tmp_path, tok, monkeypatch):
    model = tiny_model()
    meta = {"model_config": dataclasses.asdict(model.config)}
    save_checkpoint(tmp_path, 1, model.state_dict(), None, meta, tokenizer=tok)
    real_save = torch.save

    def crash(obj, f, *a, **k):
        real_save(obj, f, *a, **k)  # the temp file is fully written ...
        raise OSError("disk full")  # ... then the process "dies" before the rename

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, model.state_dict(), None, meta, tokenizer=tok)
    monkeypatch.setattr(torch, "save", real_save)
    assert not (tmp_path / "meta_000002.json").exists() and not (tmp_path / "model_000002.pt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # a model file without meta (crash between the two writes) is not a usable step either
    real_save(model.state_dict(), tmp_path / "model_000009.pt")
    assert find_last_step(tmp_path) == 1
    with pytest.raises(FileNotFoundError, match="steps present: \\[1\\]"):
        load_checkpoint(tmp_path, 9, "cpu")


def test_loads_are_weights_only(tmp_path, tok):
    model = tiny_model()
    meta = {"model_config": dataclasses.asdict(model.config)}
    save_checkpoint(tmp_path, 1, model.state_dict(), None, meta)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, tmp_path / "model_000001.pt")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_checkpoint(tmp_path, 1, "cpu")


def test_tag_and_step_selection(tmp_path, tok):
    model = tiny_model()
    meta = {"model_config": dataclasses.asdict(model.config)}
    for tag in ("d4", "d12", "d8"):
        save_checkpoint(tmp_path / "a" / tag, 1, model.state_dict(), None, meta)
    (tmp_path / "a" / "d99").mkdir()  # empty (no complete checkpoint): ignored
    assert find_largest_model(tmp_path / "a") == "d12"
    for tag in ("old", "new"):
        save_checkpoint(tmp_path / "b" / tag, 1, model.state_dict(), None, meta)
        time.sleep(0.02)
    os.utime(tmp_path / "b" / "old", (time.time() - 100, time.time() - 100))
    assert find_largest_model(tmp_path / "b") == "new"
    for step in (5, 200, 40):
        save_checkpoint(tmp_path / "c", step, model.state_dict(), None, meta)
    assert find_last_step(tmp_path / "c") == 200
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        find_last_step(tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="no model checkpoints"):
        find_largest_model(tmp_path / "missing")


def test_clear_errors(base_dir, tok, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="device='cpu'"):
        load_model("rag", device="cuda", phase="eval")
    with pytest.raises(FileNotFoundError, match=r"refrag_checkpoints does not exist.*scripts.refrag_finetune"):
        load_model("refrag", device="cpu", phase="eval")
    with pytest.raises(ValueError, match="unknown checkpoint source"):
        load_model("nope", device="cpu", phase="eval")
    model = tiny_model()
    d = save_tiny(base_dir, "rag", "d2", 1, model, tok)
    with pytest.raises(FileNotFoundError, match=r"model_tag 'd3' not found.*\['d2'\]"):
        load_model("rag", device="cpu", phase="eval", model_tag="d3")
    # a different tokenizer into the same checkpoint dir is refused
    other = Tokenizer.train_from_iterator(["completely different text corpus"] * 5, vocab_size=290)
    with pytest.raises(ValueError, match="different tokenizer"):
        save_checkpoint(d, 2, model.state_dict(), None, {"model_config": dataclasses.asdict(model.config)}, tokenizer=other)
    assert find_last_step(d) == 1
    # a path to a checkpoint directory also works as the source
    loaded, _, meta = load_model(str(d), device="cpu", phase="eval")
    assert meta["step"] == 1


@pytest.mark.gpu
@pytest.mark.parametrize("pattern,version", [("T,T", 1), ("T,M", 1), ("T,M", 2)], ids=["T,T", "T,M-v1", "T,M-v2"])
def test_cpu_checkpoint_loads_on_cuda(base_dir, tok, pattern, version):
    """Saved on CPU, loaded on the GPU (where T,M may build mamba-ssm's mixer: same keys required)."""
    model = tiny_model(pattern, version).eval()
    save_tiny(base_dir, "rag", "d2", 1, model, tok)
    loaded, _, _ = load_model("rag", device="cuda", phase="eval")
    assert all(p.device.type == "cuda" for p in loaded.parameters())
    idx = torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        assert torch.allclose(loaded(idx.cuda()).float().cpu(), model(idx), atol=1e-3)
