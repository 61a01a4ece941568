"""Export to upstream nanochat's layout, then reload: keys and config as upstream writes them, same function."""
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from nanochat.checkpoint_manager import load_model, save_checkpoint
from nanochat.gpt import GPT, GPTConfig
from nanochat.tokenizer import SPECIAL_TOKENS, Tokenizer
from nanochat.upstream.tokenizer_pkl import read_encoding
from nanochat.upstream.export import NotRepresentable, export_checkpoint, plan_export
from scripts import export_nanochat

FIXTURES = Path(__file__).parent / "fixtures" / "nanochat_upstream"
ERAS = {"2025-11": FIXTURES / "2025-11-16788ee", "2026-07": FIXTURES / "2026-07-92d63d4"}


def upstream_files(d):
    meta = json.loads(next((d / "base_checkpoints" / "d4").glob("meta_*.json")).read_text())
    state = torch.load(next((d / "base_checkpoints" / "d4").glob("model_*.pt")), weights_only=True)
    return meta, state


@pytest.mark.parametrize("era", sorted(ERAS))
def test_export_then_reload(era, tmp_path):
    ref = json.loads((ERAS[era] / "reference.json").read_text())
    model, tok, meta = load_model("base", "cpu", "eval", model_tag="d4", base_dir=ERAS[era])  # 308 tokens now
    out = export_checkpoint(model, tok, tmp_path / "up", "d4", 60, kind="chatsft")
    assert out["era"] == era and out["notes"] == []
    # what upstream's own files look like: the same config fields and tensor names; shapes differ only in the
    # vocabulary rows (300 upstream tokens + the 8 appended special tokens)
    up_meta, up_state = upstream_files(ERAS[era])
    meta_out = json.loads((tmp_path / "up" / "chatsft_checkpoints" / "d4" / "meta_000060.json").read_text())
    assert sorted(meta_out["model_config"]) == sorted(up_meta["model_config"])
    assert meta_out["model_config"]["vocab_size"] == 308
    state = torch.load(tmp_path / "up" / "chatsft_checkpoints" / "d4" / "model_000060.pt", weights_only=True)
    assert sorted(state) == sorted(up_state)
    vocab_rows = {"transformer.wte.weight", "lm_head.weight"} | {k for k in state if k.startswith("value_embeds.")}
    for k, v in state.items():
        if k not in vocab_rows:
            assert v.shape == up_state[k].shape and torch.equal(v, up_state[k]), k
        else:
            assert torch.equal(v[:300], up_state[k][:300]), k
    enc = read_encoding(tmp_path / "up" / "tokenizer" / "tokenizer.pkl")
    assert enc.n_vocab == 308 and set(enc.special_tokens) == set(SPECIAL_TOKENS) and enc.special_tokens["<|bos|>"] == 291
    token_bytes = torch.load(tmp_path / "up" / "tokenizer" / "token_bytes.pt", weights_only=True)
    assert token_bytes.shape == (308,) and token_bytes[291] == 0 and token_bytes[:256].eq(1).all()
    # our loader reads the export back: same era, same tokenizer, same function
    again, tok2, meta2 = load_model("sft", "cpu", "eval", model_tag="d4", base_dir=tmp_path / "up")
    assert meta2["era"] == era and "vocab_growth" not in meta2  # every special token is in the pickle now
    assert tok2.content_hash() == tok.content_hash()
    ids = torch.tensor([ref["ids"][1]])
    with torch.no_grad():
        assert torch.equal(again(ids), model(ids))


def tiny_project_model(pattern="T,T", copy_head=False, vocab=300):
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=64, vocab_size=vocab, n_layer=2, n_head=2, n_embd=32, block_pattern=pattern,
                          copy_head=copy_head, mamba_headdim=16))
    model.init_weights()
    return model


def test_what_cannot_be_represented_is_named(tmp_path):
    tok = Tokenizer.from_directory(ERAS["2025-11"] / "tokenizer")
    model = tiny_project_model("T,M", copy_head=True, vocab=tok.get_vocab_size())
    with pytest.raises(NotRepresentable) as err:
        plan_export(model, tok)
    text = str(err.value)
    assert "layers [1] are Mamba blocks (block_pattern T,M)" in text and "copy head" in text
    model.config = dataclasses.replace(model.config, block_pattern="T,T", copy_head=False, qk_scale=1.5)
    with pytest.raises(NotRepresentable, match=r"qk_scale=1.5 where nanochat 16788ee \(Nov 2025\) has 1.0"):
        plan_export(model, tok)


def test_script_exits_2_listing_the_reasons(tmp_path, capsys):
    tok = Tokenizer.from_directory(ERAS["2025-11"] / "tokenizer")
    model = tiny_project_model("T,M", vocab=tok.get_vocab_size())
    save_checkpoint(tmp_path / "rag_checkpoints" / "h", 3, model.state_dict(), None,
                    {"model_config": dataclasses.asdict(model.config)}, tokenizer=tok)
    with pytest.raises(SystemExit) as e:
        export_nanochat.main(["--source", "rag", "--model_tag", "h", "--base_dir", str(tmp_path),
                              "--output", str(tmp_path / "up")])
    assert e.value.code == 2
    assert "Mamba blocks" in capsys.readouterr().err and not (tmp_path / "up").exists()


def test_project_tokenizer_and_transformer_export(tmp_path, capsys):
    """A model trained here (its tokenizer has the special tokens first) exports; the note names the rotary rounding."""
    texts = ["The committee met on Tuesday and approved the budget for the bridge."] * 40
    tok = Tokenizer.train_from_iterator(texts, 320)
    model = tiny_project_model("T,T", vocab=tok.get_vocab_size())
    save_checkpoint(tmp_path / "base_checkpoints" / "d2", 7, model.state_dict(), None,
                    {"model_config": dataclasses.asdict(model.config)}, tokenizer=tok)
    out = export_nanochat.main(["--source", "base", "--model_tag", "d2", "--base_dir", str(tmp_path),
                                "--output", str(tmp_path / "up")])
    assert out["era"] == "2025-11" and "rotary tables" in out["notes"][0]
    assert "chat_cli -i base -g d2" in capsys.readouterr().out
    again, tok2, _ = load_model("base", "cpu", "eval", model_tag="d2", base_dir=tmp_path / "up")
    assert tok2.encode(texts[0]) == tok.encode(texts[0]) and tok2.get_bos_token_id() == tok.get_bos_token_id()
    x = torch.tensor([tok.encode(texts[0], prepend="<|bos|>")])
    with torch.no_grad():  # upstream's Nov-2025 rounding of the rotary tables: close, not equal
        assert (again(x) - model.eval()(x)).abs().max() < 1e-2
