"""Copy head (pointer-generator output): a proper distribution, cache = full forward, one loss everywhere,
and it learns to copy. Run: python -m pytest -q tests/test_copy_head.py"""
import torch

from nanochat.engine import Engine, InferenceCache
from nanochat.gpt import GPT, GPTConfig
from nanochat.train.loop import SupervisedLoss


def copy_model(pattern="T,M", seed=0, **kw):
    torch.manual_seed(seed)
    cfg = GPTConfig(sequence_len=64, vocab_size=67, n_layer=len(pattern.split(",")), n_head=4, n_embd=32,
                    block_pattern=pattern, mamba_headdim=16, copy_head=True, **kw)
    model = GPT(cfg)
    model.init_weights()
    with torch.no_grad():  # init zeroes output projections and the gate, which would hide bugs
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_outputs_are_log_probabilities_and_cached_decoding_matches():
    model = copy_model().eval()
    idx = torch.randint(0, 67, (2, 14))
    with torch.no_grad():
        full = model(idx)
        cache = InferenceCache(batch_size=2, max_seqlen=20)
        parts = [model(idx[:, a:b], kv_cache=cache) for a, b in ((0, 5), (5, 9), (9, 10), (10, 14))]
    torch.testing.assert_close(full.exp().sum(-1), torch.ones(2, 14))
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_every_loss_path_is_minus_log_p_of_the_target():
    model = copy_model()
    idx = torch.randint(0, 67, (2, 14))
    targets = idx.roll(-1, 1)
    targets[:, :6] = -1
    with torch.no_grad():
        logp = model(idx).gather(2, targets.clamp_min(0)[..., None]).squeeze(-1)
    want = -logp[targets != -1]
    torch.testing.assert_close(model(idx, targets), want.mean())
    torch.testing.assert_close(SupervisedLoss(model)(idx, targets), want.mean())
    torch.testing.assert_close(model(idx, targets, loss_reduction="sum"), want.sum())
    per_token = model(idx, targets, loss_reduction="none").view_as(idx)
    assert (per_token[targets == -1] == 0).all()
    torch.testing.assert_close(per_token[targets != -1], want)


def test_pointer_mass_goes_to_every_position_holding_the_token():
    """With the gate shut (all copy), p(v) is the attention mass on positions whose token is v."""
    model = copy_model().eval()
    with torch.no_grad():
        model.copy_head.gate.bias.fill_(-1e4)
        idx = torch.tensor([[5, 7, 5, 9]])
        p = model(idx).exp()[0, -1]
    assert torch.allclose(p.sum(), torch.tensor(1.0)) and set((p > 1e-6).nonzero().flatten().tolist()) == {5, 7, 9}


def test_copy_head_learns_to_copy_unseen_tokens_fast():
    """Recall the token after a marker: tokens are fresh every batch, so only copying lowers the loss."""
    model = copy_model("T,T", seed=1)
    opt = model.setup_optimizer(lr=3e-3)
    gen = torch.Generator().manual_seed(0)

    def batch(n=32):
        x = torch.randint(3, 67, (n, 16), generator=gen)
        pos = torch.randint(1, 13, (n,), generator=gen)
        x[torch.arange(n), pos] = 1  # marker; the query at the end asks for the token after it
        x[:, -1] = 1
        y = torch.full_like(x, -1)
        y[:, -1] = x[torch.arange(n), pos + 1]
        return x, y

    for _ in range(150):
        x, y = batch()
        model(x, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    x, y = batch(256)
    with torch.no_grad():
        acc = (model(x)[:, -1].argmax(-1) == y[:, -1]).float().mean().item()
    assert acc > 0.9, acc


def test_checkpoint_round_trip_and_engine(tmp_path, monkeypatch):
    from nanochat.checkpoint_manager import load_model, save_checkpoint
    from nanochat.tokenizer import Tokenizer
    import dataclasses
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    tok = Tokenizer.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, vocab_size=300)
    model = copy_model()
    model.config.vocab_size = 67
    d = tmp_path / "rag_checkpoints" / "c"
    big = GPT(dataclasses.replace(model.config, vocab_size=tok.get_vocab_size() + 4))
    big.init_weights()
    save_checkpoint(d, 1, big.state_dict(), None, {"model_config": dataclasses.asdict(big.config)}, tokenizer=tok)
    loaded, tokenizer, _ = load_model("rag", device="cpu", phase="eval")
    assert loaded.copy_head is not None
    torch.testing.assert_close(loaded.state_dict()["copy_head.q.weight"], big.state_dict()["copy_head.q.weight"])
    out, _ = Engine(loaded, tokenizer).generate_from_conversation(
        {"messages": [{"role": "user", "content": "the quick brown fox"}]}, max_tokens=5)
    assert isinstance(out, str)
