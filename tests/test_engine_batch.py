"""Batched generation (Engine.generate_many / generate_batch_conversations): prompts of different lengths decoded
side by side give the tokens one-at-a-time decoding gives, with T-only, M-only (Mamba-1 and Mamba-2) and mixed
patterns and with the copy head; left padding leaves no trace in attention, Mamba state or the copy head.
Run: python -m pytest -q tests/test_engine_batch.py
"""
import collections
import logging

import pytest
import torch

from nanochat.engine import DEFAULT_BATCH_SIZE, Engine, Generation, InferenceCache, default_batch_size
from nanochat.gpt import GPT, GPTConfig
from nanochat.mamba import Mamba, Mamba2

VOCAB = 96


class StopTokenizer:
    """The two ids Engine stops on are configurable; ids 0..VOCAB-1 decode to one character each."""

    def __init__(self, end=-1, bos=-2):
        self.end, self.bos = end, bos

    def encode_special(self, name):
        assert name == "<|assistant_end|>", name
        return self.end

    def get_bos_token_id(self):
        return self.bos

    def decode(self, ids):
        return "".join(chr(32 + i % 90) for i in ids)

    def render_for_completion(self, conversation, max_tokens=None):
        ids = [1]
        for m in conversation["messages"]:
            ids += [2] + [ord(c) % VOCAB for c in m["content"]] + [3]
        return ids + [4]


def tiny_model(pattern, version=2, copy_head=False, sequence_len=96, seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(sequence_len=sequence_len, vocab_size=VOCAB, n_layer=len(pattern.split(",")), n_head=4,
                    n_kv_head=2, n_embd=32, block_pattern=pattern, mamba_version=version, mamba_d_state=8,
                    mamba_headdim=16, copy_head=copy_head)
    model = GPT(cfg)
    model.init_weights()
    with torch.no_grad():  # init zeroes output projections and the copy gate, which would hide bugs
        for name, p in model.named_parameters():
            if not name.endswith(("A_log", "dt_bias", "dt_proj.bias")):
                p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def random_prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


def one_at_a_time(engine, prompt, max_tokens, **kw):
    """Today's path: Engine.generate for one prompt, cut at the first stop token."""
    stop, out = engine.stop_tokens(), []
    for column, _ in engine.generate(prompt, max_tokens=max_tokens, **kw):
        if column[0] in stop:
            break
        out.append(column[0])
    return out


PATTERNS = [("T,T", 2, False), ("M,M", 2, False), ("M,M", 1, False), ("T,M", 2, True), ("M,T", 1, True),
            ("T,T,M,M", 2, True)]
LENGTHS = [5, 1, 23, 17, 40, 9, 31, 4]


@pytest.mark.parametrize("pattern,version,copy_head", PATTERNS)
def test_greedy_batched_equals_one_at_a_time_and_rows_stop_independently(pattern, version, copy_head):
    model = tiny_model(pattern, version, copy_head)
    prompts = random_prompts(LENGTHS)
    # choose a stop token the model really emits, so that some rows stop early and others run to max_tokens
    free = [one_at_a_time(Engine(model, StopTokenizer()), p, 12, temperature=0.0) for p in prompts]
    counts = collections.Counter(t for out in free for t in set(out[1:]))
    stop_id = min(counts, key=lambda t: (abs(counts[t] - len(prompts) // 2), t))
    engine = Engine(model, StopTokenizer(end=stop_id))
    want = [one_at_a_time(engine, p, 12, temperature=0.0) for p in prompts]
    assert 0 < sum(len(w) < 12 for w in want) < len(prompts)  # both kinds of row are present
    for batch_size in (1, 3, 8):
        got = engine.generate_many(prompts, max_tokens=12, batch_size=batch_size)
        assert [g.tokens for g in got] == want, f"batch_size={batch_size}"
        assert [g.stopped for g in got] == ["max_tokens" if len(w) == 12 else "stop_token" for w in want]
        assert all(g.stop_token in (None, stop_id) and g.num_prompt_tokens == len(p) for g, p in zip(got, prompts))


@pytest.mark.parametrize("pattern,version,copy_head", PATTERNS)
def test_padded_prefill_gives_each_row_its_unpadded_logits(pattern, version, copy_head):
    """One left-padded forward: the last-position output of every row equals that row run alone (padding is
    invisible to attention, Mamba and the copy head), then one decoding step agrees too."""
    model = tiny_model(pattern, version, copy_head)
    prompts = random_prompts([3, 11, 1, 7])
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
    nxt = torch.randint(0, VOCAB, (len(prompts), 1))
    with torch.no_grad():
        cache = InferenceCache(len(prompts), width + 1, pads=[width - len(p) for p in prompts])
        assert cache.row_positions(width)[:, -1].tolist() == [len(p) - 1 for p in prompts]  # rotary from each start
        batched = model(ids, kv_cache=cache, last_only=True)[:, -1]
        batched_step = model(nxt, kv_cache=cache)[:, -1]
        for i, p in enumerate(prompts):
            alone = InferenceCache(1, len(p) + 1)
            torch.testing.assert_close(batched[i], model(torch.tensor([p]), kv_cache=alone)[0, -1], atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(batched_step[i], model(nxt[i:i + 1], kv_cache=alone)[0, -1], atol=2e-5, rtol=1e-4)


def mamba_states(cache, row):
    return [s[row] for states in cache.mamba_params.key_value_memory_dict.values() for s in states]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("mixer_masks", [True, False])
def test_padded_row_final_mamba_state_equals_unpadded(version, mixer_masks):
    """After a padded prefill every row's conv and SSM state is the one its prompt alone leaves: our mixers mask
    padding; mixers without pad_mask (mamba-ssm's) are prefilled row by row (mixer_masks=False)."""
    model = tiny_model("M,M", version)
    if not mixer_masks:
        for block in model.transformer.h:
            block.mixer.supports_pad_mask = False
    prompts = random_prompts([2, 13, 6], seed=3)  # one shorter than the conv width
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
    with torch.no_grad():
        cache = InferenceCache(len(prompts), width, pads=[width - len(p) for p in prompts])
        model(ids, kv_cache=cache)
        for i, p in enumerate(prompts):
            alone = InferenceCache(1, len(p))
            model(torch.tensor([p]), kv_cache=alone)
            for got, want in zip(mamba_states(cache, i), mamba_states(alone, 0)):
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cls", [Mamba, Mamba2])
def test_mixer_pad_mask_forward_and_step(cls):
    """Mixer level: a padded forward leaves the unpadded states; a step with pad_mask False leaves states as they were."""
    torch.manual_seed(0)
    kw = dict(headdim=16) if cls is Mamba2 else {}
    mixer = cls(32, d_state=8, layer_idx=0, **kw).eval()
    from nanochat.mamba import InferenceParams
    x = torch.randn(2, 9, 32)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :5] = False  # row 0 is 4 real tokens after 5 padding positions
    with torch.no_grad():
        batch = InferenceParams(max_seqlen=9, max_batch_size=2)
        y = mixer(x, inference_params=batch, pad_mask=mask)
        alone = InferenceParams(max_seqlen=4, max_batch_size=1)
        y0 = mixer(x[:1, 5:], inference_params=alone)
        torch.testing.assert_close(y[:1, 5:], y0, atol=1e-5, rtol=1e-4)
        for got, want in zip(batch.key_value_memory_dict[0], alone.key_value_memory_dict[0]):
            torch.testing.assert_close(got[:1], want, atol=1e-5, rtol=1e-4)
        before = [s.clone() for s in batch.key_value_memory_dict[0]]
        mixer.step(torch.randn(2, 1, 32), *batch.key_value_memory_dict[0], pad_mask=torch.tensor([False, True]))
        after = batch.key_value_memory_dict[0]
        assert all(torch.equal(a[0], b[0]) for a, b in zip(after, before))  # the padding row: untouched
        assert not torch.equal(after[1][1], before[1][1])  # the real row: stepped


@pytest.mark.parametrize("pattern,version", [("T,M", 2), ("M,T", 1)])
def test_padded_prefill_in_two_chunks_equals_one(pattern, version):
    """A padded batch prefilled in two calls (the second one through the Mamba step path, with padding rows still
    in it) ends in the same state as one call."""
    model = tiny_model(pattern, version, copy_head=True)
    prompts = random_prompts([3, 12, 8], seed=5)
    width = 12
    ids = torch.zeros(3, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
    pads = [width - len(p) for p in prompts]
    nxt = torch.randint(0, VOCAB, (3, 1))
    with torch.no_grad():
        one = InferenceCache(3, width + 1, pads=pads)
        model(ids, kv_cache=one)
        two = InferenceCache(3, width + 1, pads=pads)
        model(ids[:, :6], kv_cache=two)  # row 0 is all padding in this chunk
        model(ids[:, 6:], kv_cache=two)
        torch.testing.assert_close(model(nxt, kv_cache=two), model(nxt, kv_cache=one), atol=2e-5, rtol=1e-4)


def group_one_at_a_time(engine, prompt, num_samples, seed, max_tokens, **kw):
    """generate(prompt, num_samples, seed): each sample cut at its first stop token."""
    stop, out = engine.stop_tokens(), [[] for _ in range(num_samples)]
    done = [False] * num_samples
    for column, _ in engine.generate(prompt, num_samples=num_samples, max_tokens=max_tokens, seed=seed, **kw):
        for i, tok in enumerate(column):
            done[i] = done[i] or tok in stop
            if not done[i]:
                out[i].append(tok)
    return out


def test_sampling_matches_generate_per_prompt_and_ignores_batch_composition():
    model = tiny_model("T,M", 2, copy_head=True)
    prompts = random_prompts([6, 14, 3, 20, 9], seed=7)
    kw = dict(max_tokens=10, temperature=1.0, top_k=20)
    seeds = [11, 12, 13, 14, 15]
    free = [s for p, seed in zip(prompts, seeds) for s in group_one_at_a_time(Engine(model, StopTokenizer()), p, 4, seed, **kw)]
    counts = collections.Counter(t for out in free for t in set(out[1:]))
    stop_id = min(counts, key=lambda t: (abs(counts[t] - len(free) // 2), t))  # ends about half of the samples early
    engine = Engine(model, StopTokenizer(end=stop_id))
    a = engine.generate_many(prompts, seeds=seeds, batch_size=2, **kw)
    b = engine.generate_many(prompts, seeds=seeds, batch_size=5, **kw)
    sub = engine.generate_many(prompts[2:4], seeds=seeds[2:4], batch_size=5, **kw)
    assert [g.tokens for g in a] == [g.tokens for g in b]
    assert [g.tokens for g in sub] == [g.tokens for g in a[2:4]]
    for p, s, g in zip(prompts, seeds, a):  # a row's sample is the single-prompt API's with that seed
        assert g.tokens == one_at_a_time(engine, p, seed=s, **kw)
    assert [g.tokens for g in engine.generate_many(prompts, seed=11, **kw)] == [g.tokens for g in a]  # seed + i
    groups = engine.generate_many(prompts, seeds=seeds, num_samples=4, batch_size=8, **kw)
    want = [s for p, seed in zip(prompts, seeds) for s in group_one_at_a_time(engine, p, 4, seed, **kw)]
    assert [g.tokens for g in groups] == want  # the group of prompt i is generate(prompt, 4, seed=seeds[i])'s
    assert any(g.stopped == "stop_token" for g in groups) and any(g.stopped == "max_tokens" for g in groups)
    assert len({tuple(g.tokens) for g in groups[:4]}) > 1  # the samples of one prompt differ
    again = engine.generate_many(prompts, seeds=seeds, num_samples=4, batch_size=20, **kw)
    assert [g.tokens for g in again] == [g.tokens for g in groups]


def test_conversations_match_generate_from_conversation_and_context_cap(caplog):
    model = tiny_model("T,T,M,M", 2, copy_head=True, sequence_len=64)
    engine = Engine(model, StopTokenizer(end=7))
    convs = [{"messages": [{"role": "user", "content": q}]} for q in
             ("Who?", "Where is the capital of document two?", "x" * 56, "Why not")]
    with caplog.at_level(logging.WARNING, logger="nanochat.engine"):
        got = engine.generate_batch_conversations(convs, max_tokens=12, batch_size=3)
    assert "capped for 1 of 4 prompts" in caplog.text
    for conv, (text, info) in zip(convs, got):
        assert (text, info) == engine.generate_from_conversation(conv, max_tokens=12)
    assert got[2][1]["stopped"] == "context" and got[2][1]["num_prompt_tokens"] + len(got[2][1]["tokens"]) == 64


def test_full_prompt_errors_and_defaults():
    engine = Engine(tiny_model("T,M", 2, sequence_len=16), StopTokenizer())
    full = engine.generate_many([[1] * 16, [2, 3]], max_tokens=4)
    assert full[0] == Generation([], "context", None, 16) and len(full[1].tokens) == 4
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate_many([[1], []])
    with pytest.raises(ValueError, match="prompt 0 has 17 tokens but the model's sequence_len is 16"):
        engine.generate_many([[1] * 17])
    with pytest.raises(ValueError, match="seeds has 1 entries for 2 prompts"):
        engine.generate_many([[1], [2]], seeds=[0])
    with pytest.raises(ValueError, match="list of token-id lists"):
        engine.generate_many([1, 2, 3])
    assert default_batch_size("cpu") == DEFAULT_BATCH_SIZE["cpu"] and default_batch_size("cuda:0") == DEFAULT_BATCH_SIZE["cuda"]
    assert engine.generate_many([]) == []


def test_on_token_streams_each_answer_and_can_cancel_one_and_per_prompt_max_tokens():
    model = tiny_model("T,M", 2, copy_head=True)
    engine = Engine(model, StopTokenizer())
    prompts = random_prompts([5, 12, 8], seed=2)
    streamed = collections.defaultdict(list)

    def on_token(i, tok):
        streamed[i].append(tok)
        return not (i == 1 and len(streamed[i]) == 3)  # the second answer's client leaves after 3 tokens

    got = engine.generate_many(prompts, max_tokens=[6, 10, 4], batch_size=3, on_token=on_token)
    alone = [engine.generate_many([p], max_tokens=m)[0] for p, m in zip(prompts, (6, 10, 4))]
    assert [g.tokens for g in got] == [alone[0].tokens, alone[1].tokens[:3], alone[2].tokens]
    assert [g.stopped for g in got] == ["max_tokens", "cancelled", "max_tokens"]
    assert {i: streamed[i] for i in range(3)} == {i: g.tokens for i, g in enumerate(got)}
    with pytest.raises(ValueError, match="max_tokens has 2 entries for 3 prompts"):
        engine.generate_many(prompts, max_tokens=[1, 2])
