"""Upstream nanochat checkpoints and tokenizers (fixtures written by upstream's own code, see
tests/fixtures/nanochat_upstream/README.md): parity, bf16, eras, tokenizer ids, pickle refusal, tokenizer hashes,
special-token growth."""
import dataclasses
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from nanochat.checkpoint_manager import build_model, check_tokenizer, load_model, save_checkpoint
from nanochat.gpt import GPT
from nanochat.tokenizer import SPECIAL_TOKENS, Tokenizer
from nanochat.upstream.eras import UnknownConfigField, config_from_meta
from nanochat.upstream.tokenizer_pkl import RefusedPickle, read_encoding

FIXTURES = Path(__file__).parent / "fixtures" / "nanochat_upstream"
ERAS = {"2025-11": FIXTURES / "2025-11-16788ee", "2026-07": FIXTURES / "2026-07-92d63d4"}
STEP = 60


def reference(era):
    d = ERAS[era]
    return json.loads((d / "reference.json").read_text(encoding="utf-8")), torch.load(d / "reference.pt", weights_only=True)


@pytest.fixture(params=sorted(ERAS))
def era(request):
    return request.param


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0]


# ---- loading: parity with upstream's own forward


def test_parity_with_upstream_logits(era):
    ref, ref_logits = reference(era)
    model, tok, meta = load_model("base", "cpu", "eval", model_tag="d4", base_dir=ERAS[era])
    assert meta["era"] == era
    V = ref["vocab_size"]
    for text, ids, want in zip(ref["texts"], ref["ids"], ref_logits["logits"]):
        assert tok.encode(text, prepend="<|bos|>") == ids  # token ids identical
        got = logits_of(model, ids)
        assert got.shape == (len(ids), V + 8)  # upstream's vocabulary + the project's 8 special tokens
        assert (got[:, :V] - want).abs().max().item() <= 1e-4  # target 1e-3; measured 0.0
        assert torch.equal(got.argmax(-1), want.argmax(-1))  # the new tokens never take the argmax


def test_bf16_checkpoint_loads_on_cpu(era):
    ref, ref_logits = reference(era)
    raw = torch.load(ERAS[era] / "base_checkpoints" / "d4_bf16" / f"model_{STEP:06d}.pt", weights_only=True)
    assert raw["transformer.wte.weight"].dtype == torch.bfloat16  # the file really holds bf16 tensors
    model, _, _ = load_model("base", "cpu", "eval", model_tag="d4_bf16", base_dir=ERAS[era])
    assert all(p.dtype == torch.float32 for p in model.parameters())
    got = logits_of(model, ref["ids"][0])[:, :ref["vocab_size"]]
    assert (got - ref_logits["logits_bf16_short"]).abs().max().item() <= 1e-4
    assert torch.equal(got.argmax(-1), ref_logits["logits_bf16_short"].argmax(-1))


@pytest.mark.parametrize("era,option,value", [
    ("2025-11", "rotary_bf16", False),  # fp32 tables: ~6e-4 off (the finding)
    ("2026-07", "window_pattern", None),
    ("2026-07", "qk_scale", 1.0),
    ("2026-07", "rotary_base", 10000.0),
])
def test_each_era_option_changes_the_function(era, option, value):
    """Parity is not vacuous: turning one of the era's options off moves the logits on the long input."""
    ref, ref_logits = reference(era)
    meta = json.loads((ERAS[era] / "base_checkpoints" / "d4" / f"meta_{STEP:06d}.json").read_text())
    config, _ = config_from_meta(meta["model_config"])
    state = torch.load(ERAS[era] / "base_checkpoints" / "d4" / f"model_{STEP:06d}.pt", weights_only=True)
    model = GPT(dataclasses.replace(config, **{option: value}))
    model.init_weights()
    model.load_state_dict(state)
    model.eval()
    assert (logits_of(model, ref["ids"][1]) - ref_logits["logits"][1]).abs().max().item() > 1e-4


def test_incremental_decoding_matches_the_full_forward():
    """Smear, sliding windows and value embeddings through the inference cache (prefill, then one token at a time,
    then replicated samples) give the logits of one full forward."""
    from nanochat.engine import InferenceCache
    ref, _ = reference("2026-07")
    model, _, _ = load_model("base", "cpu", "eval", model_tag="d4", base_dir=ERAS["2026-07"])
    ids = torch.tensor([ref["ids"][1]])  # 171 tokens: the 128-token window cuts in
    full = logits_of(model, ids[0].tolist())
    cache = InferenceCache(1, ids.size(1))
    with torch.no_grad():
        steps = [model(ids[:, :100], kv_cache=cache)[0]]
        steps += [model(ids[:, t:t + 1], kv_cache=cache)[0] for t in range(100, 150)]
        rep = cache.replicate(2)
        steps += [model(ids[:, 150:].repeat(2, 1), kv_cache=rep)[1]]
    assert (torch.cat(steps) - full).abs().max().item() < 1e-4


def test_left_padded_batch_matches_each_row_alone():
    """Batched generation over upstream's Jul-2026 options: in one left-padded forward, smear, value embeddings and
    the 128-token sliding window see each row's own tokens only, so every row's logits (prefill and one decoding
    step) are the ones it gets alone."""
    from nanochat.engine import InferenceCache
    ref, _ = reference("2026-07")
    model, _, _ = load_model("base", "cpu", "eval", model_tag="d4", base_dir=ERAS["2026-07"])
    prompts = [ref["ids"][1][:n] for n in (171, 40, 3, 130)]
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
    nxt = torch.tensor([[5], [7], [11], [13]])
    with torch.no_grad():
        cache = InferenceCache(len(prompts), width + 1, pads=[width - len(p) for p in prompts])
        batched = model(ids, kv_cache=cache)[:, -1]
        batched_step = model(nxt, kv_cache=cache)[:, -1]
        for i, p in enumerate(prompts):
            alone = InferenceCache(1, len(p) + 1)
            torch.testing.assert_close(batched[i], model(torch.tensor([p]), kv_cache=alone)[0, -1], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(batched_step[i], model(nxt[i:i + 1], kv_cache=alone)[0, -1], atol=1e-4, rtol=1e-4)


def test_sft_source_reads_chatsft_checkpoints(tmp_path):
    shutil.copytree(ERAS["2026-07"] / "tokenizer", tmp_path / "tokenizer")
    shutil.copytree(ERAS["2026-07"] / "base_checkpoints" / "d4", tmp_path / "chatsft_checkpoints" / "d4")
    model, tok, meta = load_model("sft", "cpu", "eval", base_dir=tmp_path)
    assert meta["era"] == "2026-07" and tok.get_bos_token_id() == 291


# ---- eras: unknown fields and mismatched weights


def test_unknown_config_field_names_it_and_the_eras(tmp_path):
    d = tmp_path / "base_checkpoints" / "d4"
    shutil.copytree(ERAS["2026-07"] / "base_checkpoints" / "d4", d)
    shutil.copytree(ERAS["2026-07"] / "tokenizer", tmp_path / "tokenizer")
    meta = json.loads((d / f"meta_{STEP:06d}.json").read_text())
    meta["model_config"]["attn_softcap"] = 30.0
    (d / f"meta_{STEP:06d}.json").write_text(json.dumps(meta))
    with pytest.raises(UnknownConfigField, match=r"'attn_softcap'.*\n.*16788ee \(Nov 2025\).*\n.*92d63d4 \(Jul 2026\)"):
        load_model("base", "cpu", "eval", base_dir=tmp_path)


def test_weights_of_another_era_are_a_clear_error(tmp_path):
    d = tmp_path / "base_checkpoints" / "d4"
    shutil.copytree(ERAS["2026-07"] / "base_checkpoints" / "d4", d)  # Jul-2026 weights ...
    meta = json.loads((d / f"meta_{STEP:06d}.json").read_text())
    del meta["model_config"]["window_pattern"]  # ... under a Nov-2025 config
    (d / f"meta_{STEP:06d}.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"reads as nanochat 16788ee.*unexpected \['backout_lambda'"):
        build_model(d, STEP, "cpu", "eval", base_dir=tmp_path)


# ---- tokenizers


def test_upstream_tokenizer_keeps_ids_and_appends_the_project_specials(era):
    ref, _ = reference(era)
    tok = Tokenizer.from_directory(ERAS[era] / "tokenizer")
    for case in ref["tokenizer_cases"]:
        assert tok.encode(case["text"]) == case["ids"], case["text"]
    for name, idx in ref["special_tokens"].items():
        assert tok.encode_special(name) == idx
    added = [s for s in SPECIAL_TOKENS if s not in ref["special_tokens"]]
    assert [tok.encode_special(s) for s in added] == list(range(300, 300 + len(added)))
    assert tok.origin["added_special_tokens"] == {s: 300 + i for i, s in enumerate(added)}
    assert tok.decode(ref["ids"][0]) == "<|bos|>" + ref["texts"][0]


def _evil_pickle(path, target):
    class Evil:
        def __reduce__(self):
            return os.mkdir, (str(target),)
    path.write_bytes(pickle.dumps(Evil()))


def test_pickle_naming_other_globals_is_refused_without_running(tmp_path):
    target = tmp_path / "pwned"
    _evil_pickle(tmp_path / "tokenizer.pkl", target)
    with pytest.raises(RefusedPickle, match=r"refusing to load (posix|os|nt)\.mkdir"):
        read_encoding(tmp_path / "tokenizer.pkl")
    with pytest.raises(RefusedPickle, match="mkdir"):
        Tokenizer.from_directory(tmp_path)
    assert not target.exists()


def test_pickle_with_wrong_state_is_refused(tmp_path):
    data = (ERAS["2025-11"] / "tokenizer" / "tokenizer.pkl").read_bytes()
    p = tmp_path / "tokenizer.pkl"
    p.write_bytes(data.replace(b"\x8c\x07rustbpe", b"\x8c\x07RUSTBPE"))  # still valid: name only
    assert read_encoding(p).name == "RUSTBPE"
    # a registered-encoding reference (tiktoken would download its ranks)
    header = b"\x80\x04\x8c\rtiktoken.core\x8c\x08Encoding\x93)\x81"  # Encoding.__new__, then BUILD's state
    p.write_bytes(header + b"\x8c\x0bcl100k_baseb.")
    with pytest.raises(RefusedPickle, match="registered encoding 'cl100k_base'"):
        read_encoding(p)
    p.write_bytes(header + pickle.dumps({"name": "x", "pat_str": ".", "mergeable_ranks": {"a": 0},
                                         "special_tokens": {}}, protocol=4)[2:-1] + b"b.")
    with pytest.raises(RefusedPickle, match="wrong types"):
        read_encoding(p)
    p.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(RefusedPickle, match="not a readable pickle"):
        read_encoding(p)


def _tiny_project_checkpoint(base_dir, tok, tag="t"):
    from nanochat.gpt import GPTConfig
    model = GPT(GPTConfig(sequence_len=32, vocab_size=tok.get_vocab_size(), n_layer=2, n_head=2, n_embd=32))
    model.init_weights()
    d = Path(base_dir) / "base_checkpoints" / tag
    save_checkpoint(d, 1, model.state_dict(), None, {"model_config": dataclasses.asdict(model.config)}, tokenizer=tok)
    return d


def test_checkpoints_record_the_tokenizer_hash_and_a_different_one_is_an_error(tmp_path):
    tok_a = Tokenizer.from_directory(ERAS["2025-11"] / "tokenizer")
    tok_b = Tokenizer.train_from_iterator(["a different tokenizer, trained here"] * 50, 300)
    d = _tiny_project_checkpoint(tmp_path, tok_a)
    meta = json.loads((d / "meta_000001.json").read_text())
    assert meta["tokenizer"]["hash"] == tok_a.content_hash() != tok_b.content_hash()
    assert meta["tokenizer"]["origin"]["added_special_tokens"]["<|doc_start|>"] == 304  # recorded in the meta
    check_tokenizer(meta, tok_a)
    with pytest.raises(ValueError, match=f"saved with tokenizer {tok_a.content_hash()}.*given is {tok_b.content_hash()}"):
        check_tokenizer(meta, tok_b)
    # the checkpoint's tokenizer copy goes missing and the base dir holds another tokenizer
    shutil.rmtree(d / "tokenizer")
    tok_b.save(tmp_path / "tokenizer")
    with pytest.raises(ValueError, match=f"{tok_a.content_hash()}.*{tok_b.content_hash()}"):
        load_model("base", "cpu", "eval", model_tag="t", base_dir=tmp_path)
    shutil.rmtree(tmp_path / "tokenizer")
    tok_a.save(tmp_path / "tokenizer")  # the right one: loads
    load_model("base", "cpu", "eval", model_tag="t", base_dir=tmp_path)


def test_content_hash_is_the_same_through_json_and_pickle(tmp_path):
    tok = Tokenizer.from_directory(ERAS["2026-07"] / "tokenizer")
    tok.save(tmp_path / "saved")
    again = Tokenizer.from_directory(tmp_path / "saved")
    assert again.content_hash() == tok.content_hash() and again.origin == tok.origin
    assert again.encode("numbers 1234567 and 3.14159") == tok.encode("numbers 1234567 and 3.14159")


def test_upstream_model_with_the_wrong_tokenizer_is_an_error(tmp_path):
    shutil.copytree(ERAS["2026-07"] / "base_checkpoints", tmp_path / "base_checkpoints")
    # what `scripts.tok_train` leaves: a tokenizer.json made here, no tokenizer.pkl
    Tokenizer.train_from_iterator(["text of the user's documents"] * 50, 400).save(tmp_path / "tokenizer")
    with pytest.raises(ValueError, match=r"upstream nanochat checkpoint.*tokenizer\.json \(hash sha256:"):
        load_model("base", "cpu", "eval", model_tag="d4", base_dir=tmp_path)
    # an upstream tokenizer.pkl of another size
    shutil.rmtree(tmp_path / "tokenizer")
    (tmp_path / "tokenizer").mkdir()
    from nanochat.upstream.tokenizer_pkl import write_encoding
    enc = read_encoding(ERAS["2026-07"] / "tokenizer" / "tokenizer.pkl")
    enc.special_tokens["<|extra|>"] = 300
    write_encoding(tmp_path / "tokenizer" / "tokenizer.pkl", enc)
    with pytest.raises(ValueError, match=r"has 301 tokens .* vocab_size 300: not its tokenizer"):
        load_model("base", "cpu", "eval", model_tag="d4", base_dir=tmp_path)


# ---- growing the vocabulary


def test_grow_vocab_keeps_the_function_and_the_rows(era, tmp_path):
    ref, ref_logits = reference(era)
    model, tok, meta = load_model("base", "cpu", "eval", model_tag="d4", base_dir=ERAS[era])
    g = meta["vocab_growth"]
    assert (g["from"], g["to"]) == (300, 308) and g["tokens"]["<|hop_end|>"] == 307
    assert g["rows"] == (320 if era == "2026-07" else 308)  # Jul 2026's padding rows are reused
    wte = model.transformer.wte.weight
    new, old = wte[300:308], wte[:300]
    assert (new.mean(0) - old.mean(0)).abs().max() < 0.2 * old.std(0).max()  # centred on the trained rows
    assert len({tuple(r.tolist()) for r in new}) == 8  # yet distinct
    # the grown model saves as a project checkpoint and reloads to the same function
    save_checkpoint(tmp_path / "base_checkpoints" / "g", 1, model.state_dict(), None,
                    {"model_config": dataclasses.asdict(model.config)}, tokenizer=tok)
    again, tok2, meta2 = load_model("base", "cpu", "eval", model_tag="g", base_dir=tmp_path)
    assert "era" not in meta2 and tok2.content_hash() == tok.content_hash()
    assert torch.equal(logits_of(again, ref["ids"][1]), logits_of(model, ref["ids"][1]))


def test_nanochat_turbo_fields_are_accepted(tmp_path):
    """The fork writes block_pattern as a list and mamba_use_mlp, with Mamba-1 blocks without an MLP."""
    from nanochat.upstream.eras import detect_era
    fields = {"sequence_len": 64, "vocab_size": 300, "n_layer": 2, "n_head": 2, "n_kv_head": 2, "n_embd": 32,
              "block_pattern": ["T", "M"], "mamba_d_state": 8, "mamba_d_conv": 4, "mamba_expand": 2,
              "mamba_use_mlp": False}
    assert detect_era(fields) == "turbo"
    config, _ = config_from_meta(fields)
    assert config.mamba_version == 1 and config.block_pattern == ["T", "M"]
    model = GPT(config)
    model.init_weights()
    assert model.transformer.h[1].mlp is None and not any(".h.1.mlp." in k for k in model.state_dict())
    shutil.copytree(ERAS["2025-11"] / "tokenizer", tmp_path / "tokenizer")
    save = tmp_path / "base_checkpoints" / "turbo"
    save.mkdir(parents=True)
    torch.save(model.state_dict(), save / "model_000001.pt")
    (save / "meta_000001.json").write_text(json.dumps({"step": 1, "model_config": fields}))
    loaded, tok, meta = load_model("base", "cpu", "eval", base_dir=tmp_path)
    assert meta["era"] == "turbo" and loaded.config.mamba_use_mlp is False and tok.get_vocab_size() == 308
