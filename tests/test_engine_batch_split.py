"""Batched greedy decoding equals one-at-a-time decoding on every question of the synthetic test split (seed 0,
2000 entities: 700 questions), rendered as the RAG evaluation renders them (gold documents plus neighbours), with
the tiny fine-tuned T,M copy-head model of the chat tests and with random T-only and M-only (Mamba-2) copy-head
models. Slow: about a minute per model on 2 cores.

    python -m pytest -q tests/test_engine_batch_split.py
"""
import pytest
import torch

from nanochat.engine import Engine


@pytest.fixture(scope="module")
def split_conversations():
    from bench.eval_speed import synthetic_conversations
    convs, _ = synthetic_conversations(700, top_k=2, max_doc_length=40)
    assert len(convs) == 700
    return convs


def random_copy_model(pattern, vocab, version=2):
    from nanochat.gpt import GPT, GPTConfig
    torch.manual_seed(0)
    cfg = GPTConfig(sequence_len=256, vocab_size=vocab, n_layer=2, n_head=2, n_embd=32, block_pattern=pattern,
                    mamba_version=version, mamba_headdim=16, copy_head=True)
    model = GPT(cfg)
    model.init_weights()
    with torch.no_grad():  # init zeroes output projections and the copy gate: give every path real work
        for name, p in model.named_parameters():
            if not name.endswith(("A_log", "dt_bias", "dt_proj.bias")):
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["trained T,M", "random T,T", "random M,M"])
def test_every_test_question_batched_equals_one_at_a_time(chat_world, split_conversations, which):
    from nanochat.checkpoint_manager import load_model
    model, tok, _ = load_model("rag", "cpu", "eval", model_tag="tiny", base_dir=chat_world["base"])
    if which != "trained T,M":
        model = random_copy_model(which.split()[1], tok.get_vocab_size())
    engine = Engine(model, tok)
    alone = [engine.generate_from_conversation(c, max_tokens=16) for c in split_conversations]
    together = engine.generate_batch_conversations(split_conversations, max_tokens=16, batch_size=32)
    differ = [i for i, (a, b) in enumerate(zip(alone, together)) if a != b]
    assert not differ, f"{len(differ)} of 700 answers differ, first at question {differ[0]}"
    if which == "trained T,M":  # the fine-tuned model stops on its own: rows leave their batches at different steps
        assert 0 < sum(info["stopped"] == "stop_token" for _, info in alone) < 700
