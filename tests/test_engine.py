"""Engine: streaming generation with the hybrid inference cache, sampling, stop tokens, conversations.

Uses a byte-level mock tokenizer and (for control-flow tests) a scripted mock model, as nanochat's
tests/test_engine.py does, so nothing here depends on a trained tokenizer.
Run: python -m pytest -q tests/test_engine.py
"""
import logging

import pytest
import torch

from nanochat.engine import Engine, InferenceCache, parse_citations
from nanochat.gpt import GPT, GPTConfig

SPECIALS = ["<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
            "<|system_start|>", "<|system_end|>", "<|retrieval_start|>", "<|retrieval_end|>"]


class ByteTokenizer:
    """Bytes 0..255 plus the special tokens after them; renders the guide's conversation shapes."""

    def __init__(self):
        self.special = {s: 256 + i for i, s in enumerate(SPECIALS)}
        self.last_max_tokens = None

    def get_vocab_size(self):
        return 256 + len(SPECIALS)

    def encode_special(self, name):
        return self.special[name]

    def get_bos_token_id(self):
        return self.special["<|bos|>"]

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        names = {v: k for k, v in self.special.items()}
        return "".join(names[i] if i in names else bytes([i]).decode("utf-8", "replace") for i in ids)

    def render_for_completion(self, conversation, max_tokens=None):
        self.last_max_tokens = max_tokens
        sp, ids, n = self.encode_special, [self.get_bos_token_id()], 0
        for m in conversation["messages"]:
            if m["role"] == "retrieval":
                docs = [d for hop in m["hops"] for d in hop["documents"]] if m.get("multi_hop") else m["documents"]
                ids.append(sp("<|retrieval_start|>"))
                for d in docs:
                    n += 1
                    ids += self.encode(f"[{n}] {d['title']}\n{d['content']}\n")
                ids.append(sp("<|retrieval_end|>"))
            elif m["role"] in ("system", "user"):
                ids += [sp(f"<|{m['role']}_start|>")] + self.encode(m["content"]) + [sp(f"<|{m['role']}_end|>")]
        return ids + [sp("<|assistant_start|>")]


class ScriptedModel:
    """Emits script[j] as the j-th generated token (argmax); advances the cache like GPT.forward."""

    def __init__(self, script, prompt_len, vocab_size, sequence_len=64):
        self.script, self.prompt_len, self.vocab_size = script, prompt_len, vocab_size
        self.config = GPTConfig(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=1, n_head=1,
                                n_embd=8, mamba_version=1)
        self.calls = []

    def get_device(self):
        return torch.device("cpu")

    def forward(self, idx, kv_cache=None):
        B, T = idx.shape
        self.calls.append(T)
        j = kv_cache.get_pos() + T - self.prompt_len
        kv_cache.advance(T)
        logits = torch.zeros(B, T, self.vocab_size)
        logits[:, -1, self.script[min(j, len(self.script) - 1)]] = 100.0
        return logits


TOK = ByteTokenizer()
END = TOK.encode_special("<|assistant_end|>")
CONVERSATION = {"messages": [
    {"role": "system", "content": "You are helpful."},
    {"role": "retrieval", "documents": [{"title": "Returns", "content": "30 days."}]},
    {"role": "user", "content": "Return policy?"},
]}
MULTI_HOP = {"messages": [
    {"role": "retrieval", "multi_hop": True, "hops": [
        {"hop": 1, "query": "q", "documents": [{"title": "A", "content": "a"}]},
        {"hop": 2, "query": "q2", "documents": [{"title": "B", "content": "b"}]}]},
    {"role": "user", "content": "Who?"},
]}


def tiny_model(pattern="T,M", version=2, sequence_len=64, seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(sequence_len=sequence_len, vocab_size=TOK.get_vocab_size(), n_layer=len(pattern.split(",")),
                    n_head=2, n_embd=32, block_pattern=pattern, mamba_version=version, mamba_d_state=8,
                    mamba_headdim=16)
    model = GPT(cfg)
    model.init_weights()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith(("A_log", "dt_bias", "dt_proj.bias")):
                p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def scripted_engine(text_or_ids, prompt, sequence_len=64):
    script = TOK.encode(text_or_ids) if isinstance(text_or_ids, str) else text_or_ids
    return Engine(ScriptedModel(script, len(prompt), TOK.get_vocab_size(), sequence_len), TOK)


# ---- real tiny model

@pytest.mark.parametrize("pattern,version", [("T,M", 1), ("M,T", 2), ("T,T", 2)])
def test_greedy_generation_matches_full_recompute(pattern, version):
    """Cached greedy decoding picks the same tokens as recomputing the whole sequence each step."""
    model = tiny_model(pattern, version)
    prompt = TOK.render_for_completion(CONVERSATION)
    engine = Engine(model, TOK)
    cached = [col[0] for col, _ in engine.generate(prompt, max_tokens=12, temperature=0.0)]
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(len(cached)):
            logits = model(torch.tensor([ids]))[0, -1]
            ids.append(int(logits.argmax()))
    assert cached == ids[len(prompt):]


def test_seeded_sampling_is_deterministic_and_multi_sample():
    engine = Engine(tiny_model(), TOK)
    prompt = TOK.render_for_completion(CONVERSATION)
    run = lambda seed, n: [col for col, _ in engine.generate(prompt, num_samples=n, max_tokens=10,
                                                            temperature=1.0, seed=seed)]
    a, b, c = run(1, 1), run(1, 1), run(2, 1)
    assert a == b and a != c
    cols = run(3, 4)
    assert all(len(col) == 4 for col in cols)
    samples = list(zip(*cols))
    assert len(set(samples)) > 1  # samples share the prefill but sample independently
    greedy = [col for col, _ in engine.generate(prompt, num_samples=3, max_tokens=6, temperature=0.0)]
    assert all(len(set(col)) == 1 for col in greedy)  # replicated cache: identical greedy rows


def test_replicated_cache_matches_batched_prefill():
    model = tiny_model("T,M", 2)
    idx = torch.randint(0, 256, (1, 7))
    with torch.no_grad():
        one = InferenceCache(1, 9)
        model(idx, kv_cache=one)
        rep = one.replicate(3)
        three = InferenceCache(3, 9)
        model(idx.repeat(3, 1), kv_cache=three)
        nxt = torch.randint(0, 256, (3, 1))
        torch.testing.assert_close(model(nxt, kv_cache=rep), model(nxt, kv_cache=three), atol=1e-5, rtol=1e-5)


def test_generate_from_conversation_real_model_both_retrieval_forms():
    engine = Engine(tiny_model(sequence_len=128), TOK)
    for conv in (CONVERSATION, MULTI_HOP):
        text, info = engine.generate_from_conversation(conv, max_tokens=8)
        assert TOK.last_max_tokens == 128 - 8  # prompt budget handed to the tokenizer (documents trimmed first)
        assert info["num_prompt_tokens"] == len(TOK.render_for_completion(conv))
        assert len(info["tokens"]) <= 8 and info["stopped"] in ("stop_token", "max_tokens")
        assert text == TOK.decode(info["tokens"])


# ---- control flow with a scripted model

def test_stops_on_assistant_end_and_reports_citations():
    prompt = TOK.render_for_completion(CONVERSATION)
    engine = scripted_engine(TOK.encode("30 days [1], see [3] and [1].") + [END] + TOK.encode("junk"), prompt,
                             sequence_len=256)
    text, info = engine.generate_from_conversation(CONVERSATION, max_tokens=100)
    assert text == "30 days [1], see [3] and [1]."
    assert info["stopped"] == "stop_token" and info["stop_token"] == END
    assert info["citations"] == [1, 3]
    assert info["tokens"] == TOK.encode(text)
    # one prefill of the whole prompt, then single-token steps
    assert engine.model.calls[0] == len(prompt) and set(engine.model.calls[1:]) == {1}


def test_stops_on_bos_and_max_tokens():
    prompt = TOK.render_for_completion(CONVERSATION)
    engine = scripted_engine(TOK.encode("ab") + [TOK.get_bos_token_id()], prompt, sequence_len=256)
    results, masks = engine.generate_batch(prompt, num_samples=2, max_tokens=50, temperature=0.0)
    assert results == [prompt + TOK.encode("ab")] * 2
    assert masks == [[0] * len(prompt) + [1, 1]] * 2
    engine = scripted_engine("abcdefgh", prompt, sequence_len=256)
    text, info = engine.generate_from_conversation(CONVERSATION, max_tokens=5)
    assert text == "abcde" and info["stopped"] == "max_tokens"


def test_long_prompt_error_and_context_cap(caplog):
    prompt = list(range(70))
    engine = scripted_engine("x" * 100, prompt, sequence_len=64)
    with pytest.raises(ValueError, match="prompt has 70 tokens but the model's sequence_len is 64"):
        next(engine.generate(prompt, max_tokens=5))
    prompt = list(range(60))
    engine = scripted_engine("x" * 100, prompt, sequence_len=64)
    with caplog.at_level(logging.WARNING, logger="nanochat.engine"):
        cols = list(engine.generate(prompt, max_tokens=50))
    assert len(cols) == 4 and "capped to 4" in caplog.text


def test_bad_conversation_and_citation_parser():
    engine = scripted_engine("x", [0])
    with pytest.raises(ValueError, match='conversation must be a dict {"messages"'):
        engine.generate_from_conversation([{"role": "user", "content": "hi"}])
    assert parse_citations("[2] then [10], [2] and [x]") == [2, 10]


def test_real_tokenizer_trims_documents_to_fit():
    """With nanochat's Tokenizer, an over-long retrieval is trimmed to sequence_len - max_tokens, not an error."""
    from nanochat.tokenizer import Tokenizer
    tok = Tokenizer.train_from_iterator(["the return policy is thirty days, see the receipt"] * 20, vocab_size=300)
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=96, vocab_size=tok.get_vocab_size(), n_layer=2, n_head=2, n_embd=32,
                    block_pattern="T,M", mamba_version=2, mamba_d_state=8, mamba_headdim=16)
    model = GPT(cfg)
    model.init_weights()
    conv = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "retrieval", "documents": [{"title": "Returns", "content": "thirty days. " * 80}]},
                         {"role": "user", "content": "policy?"}]}
    assert len(tok.render_for_completion(conv)) > 96
    text, info = Engine(model.eval(), tok).generate_from_conversation(conv, max_tokens=16)
    assert info["num_prompt_tokens"] <= 96 - 16 and len(info["tokens"]) <= 16


class SpecialTokenLovingModel(ScriptedModel):
    """Ranks <|assistant_start|> and <|user_start|> above the scripted answer at every step, as a small model
    sometimes does mid-answer; assistant_end, once the script is done, is ranked above everything."""

    def forward(self, idx, kv_cache=None, last_only=False):
        logits = super().forward(idx, kv_cache)
        scripted = logits[:, -1].argmax(-1)
        logits[:, -1] = 0.0
        logits[torch.arange(len(idx)), -1, scripted] = 50.0
        for name in ("<|assistant_start|>", "<|user_start|>"):
            logits[:, -1, TOK.encode_special(name)] = 100.0
        logits[scripted == END, -1, END] = 200.0
        return logits


class SpecialsTokenizer(ByteTokenizer):
    def get_special_tokens(self):
        return list(SPECIALS)


def test_answers_never_contain_special_tokens_other_than_stops():
    """Decoding skips special tokens an answer cannot contain (greedy, sampled, one prompt or many) and still
    stops on assistant_end."""
    tok = SpecialsTokenizer()
    prompt = tok.render_for_completion(CONVERSATION)
    engine = Engine(SpecialTokenLovingModel(tok.encode("1939") + [END], len(prompt), tok.get_vocab_size(), 256),
                    tok)
    banned = set(engine.banned_tokens())
    assert tok.encode_special("<|assistant_start|>") in banned and not banned & engine.stop_tokens()
    text, info = engine.generate_from_conversation(CONVERSATION, max_tokens=20)
    assert text == "1939" and info["stopped"] == "stop_token"
    engine.model.prompt_len = len(prompt)
    [(batched, _)] = engine.generate_batch_conversations([CONVERSATION], max_tokens=20)
    assert batched == "1939"
    sampled = [col[0] for col, _ in engine.generate(prompt, max_tokens=8, temperature=1.0, seed=3)]
    assert not banned & set(sampled)
    # a tokenizer without special tokens bans nothing
    assert Engine(engine.model, TOK).banned_tokens() == []
