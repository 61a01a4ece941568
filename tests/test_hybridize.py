"""Hybridize: attention layers -> Mamba-2 mixers initialised from the attention weights, then distillation
(nanochat.hybridize, scripts.hybridize) on tiny models."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanochat.checkpoint_manager import load_model, save_checkpoint
from nanochat.gpt import GPT, GPTConfig
from nanochat.hybridize import build_student, kl_to_teacher, student_config
from nanochat.common import read_csv_columns as read_metrics_csv
from scripts import hybridize

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "nanochat_upstream"


def tiny_teacher(vocab, n_kv_head=1, seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(sequence_len=128, vocab_size=vocab, n_layer=4, n_head=2, n_kv_head=n_kv_head, n_embd=32))
    model.init_weights()
    with torch.no_grad():  # an untrained model has zero output projections: make every layer do something
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 30-entity synthetic world's KB, a tokenizer trained on it, a T,T,T,T teacher under base_checkpoints/t4."""
    from nanochat.retrieval import build_knowledge_base
    from nanochat.data.synthetic import generate_world
    from nanochat.tokenizer import Tokenizer
    root = tmp_path_factory.mktemp("hybridize")
    generate_world(root / "data", seed=0, n_entities=30)
    build_knowledge_base(root / "data" / "documents.jsonl", root / "kb", retriever_types=("simple",), show_progress=False)
    texts = [json.loads(l)["content"] for l in (root / "data" / "documents.jsonl").read_text().splitlines()]
    tok = Tokenizer.train_from_iterator(texts * 2, vocab_size=400)
    teacher = tiny_teacher(tok.get_vocab_size())
    save_checkpoint(root / "base" / "base_checkpoints" / "t4", 5, teacher.state_dict(), None,
                    {"model_config": dataclasses.asdict(teacher.config), "model_tag": "t4"}, tokenizer=tok)
    return {"root": root, "kb": root / "kb", "base": root / "base", "teacher": teacher, "tok": tok}


def args(world, *extra):
    return ["--source", "base", "--model_tag", "t4", "--block_pattern", "T,T,M,M", "--knowledge_base", str(world["kb"]),
            "--max_seq_len", "64", "--device_batch_size", "4", "--val_rows", "8", "--lr", "3e-3", "--warmup_steps", "2",
            "--device", "cpu", "--num_threads", "1", "--base_dir", str(world["base"]), *extra]


def test_attention_weights_land_where_mamba_in_the_llama_puts_them():
    teacher = tiny_teacher(64, n_kv_head=1)  # GQA: 2 query heads share 1 key/value head
    student, replaced = build_student(teacher, "T,M,T,M")
    assert replaced == [1, 3]
    attn, mixer = teacher.transformer.h[1].attn, student.transformer.h[1].mixer
    D, H = 16, 2
    assert (mixer.nheads, mixer.headdim, mixer.ngroups, mixer.d_state, mixer.d_ssm) == (H, D, H, D, 32)
    W = mixer.in_proj.weight
    z, x, B, C, dt = torch.split(W, [32, 32, H * D, H * D, H])
    assert torch.equal(x, attn.c_v.weight.repeat(2, 1))  # kv head 0 serves both SSM heads
    assert torch.equal(B, attn.c_k.weight.repeat(2, 1))
    assert torch.equal(C, attn.c_q.weight)
    assert torch.equal(mixer.out_proj.weight, attn.c_proj.weight)
    assert torch.equal(mixer.conv1d.weight[:, 0, -1], torch.ones(mixer.conv1d.weight.size(0)))
    assert mixer.conv1d.weight[:, :, :-1].abs().sum() == 0
    # everything else is the teacher's: embeddings, every MLP, the attention layers kept
    t, s = teacher.state_dict(), student.state_dict()
    for k in t:
        if not k.startswith(("transformer.h.1.attn", "transformer.h.3.attn")):
            assert torch.equal(s[k], t[k]), k
    # the random baseline has the same shapes and shares everything but the mixers
    rand, _ = build_student(teacher, "T,M,T,M", init="random")
    assert {k: v.shape for k, v in rand.state_dict().items()} == {k: v.shape for k, v in s.items()}
    assert not torch.equal(rand.transformer.h[1].mixer.in_proj.weight, W)
    assert rand.transformer.h[1].mixer.out_proj.weight.abs().sum() == 0  # the project's new Mamba layer: identity
    noisy, _ = build_student(teacher, "T,M,T,M", init="random_out")
    assert noisy.transformer.h[1].mixer.out_proj.weight.std() > 0.01  # mamba-ssm's nn.Linear init
    assert torch.equal(noisy.transformer.h[1].mixer.in_proj.weight, rand.transformer.h[1].mixer.in_proj.weight)


def test_calibrated_attention_init_starts_as_a_linear_attention():
    """D = 0, one dt and decay per head, and a gate that the gated RMSNorm divides out (one positive silu(z) per
    token across the channels), measured on the inputs the replaced attention layer sees."""
    import math
    from nanochat.hybridize import DECAY, DT, GATE, layer_inputs
    teacher = tiny_teacher(64, n_kv_head=2)
    with torch.no_grad():  # a trained residual stream has a common direction (the 2000-entity teacher: every input >= 1.6 along it)
        teacher.transformer.wte.weight += 4.0 * torch.nn.functional.normalize(torch.ones(32), dim=0)
    tokens = torch.randint(0, 64, (4, 40), generator=torch.Generator().manual_seed(0))
    student, replaced = build_student(teacher, "T,M,T,M", calibration=tokens)
    mixer = student.transformer.h[1].mixer
    assert mixer.D.abs().sum() == 0
    z, x, B, C, dt = torch.split(mixer.in_proj.weight, [32, 32, 32, 32, 2])
    assert dt.abs().sum() == 0
    assert torch.allclose(torch.nn.functional.softplus(mixer.dt_bias), torch.full((2,), DT))
    assert torch.allclose(torch.exp(-DT * torch.exp(mixer.A_log)), torch.full((2,), DECAY))
    assert torch.equal(z, z[:1].expand_as(z))  # every gate channel reads the same direction
    h = layer_inputs(teacher, [1], tokens)[1]
    pre = h @ z[0]
    assert abs(pre.mean().item() - GATE) < 1e-4 and (pre > 0).float().mean() > 0.95  # silu's near-linear side
    # the norm that follows divides the gate out: gated and ungated outputs agree where the gate is positive
    y = torch.randn(h.size(0), 32)
    on = pre > 0.5
    assert torch.allclose(mixer.norm(y, h @ z.T)[on], mixer.norm(y)[on], atol=1e-3)
    # without calibration rows the gate keeps Mamba's random init (rows differ)
    plain, _ = build_student(teacher, "T,M,T,M")
    zp = plain.transformer.h[1].mixer.in_proj.weight[:32]
    assert not torch.equal(zp, zp[:1].expand_as(zp)) and math.isclose(plain.transformer.h[1].mixer.D.abs().sum().item(), 0)


def test_patterns_that_do_not_replace_attention_are_refused():
    cfg = GPTConfig(sequence_len=32, vocab_size=64, n_layer=2, n_head=2, n_embd=32)
    with pytest.raises(ValueError, match="replaces no attention layer"):
        student_config(cfg, "T,T")
    with pytest.raises(ValueError, match="2 layers but n_layer=2|has 3 layers"):
        student_config(cfg, "T,M,M")
    hybrid = dataclasses.replace(cfg, block_pattern="T,M")
    with pytest.raises(ValueError, match="already has Mamba layers"):
        student_config(hybrid, "M,M")


def test_distillation_lowers_the_kl_and_saves_a_loadable_hybrid(world):
    ckpt = hybridize.main(args(world, "--steps", "12", "--eval_every", "4"))
    assert ckpt == world["base"] / "base_checkpoints" / "hybrid-t4"
    m = read_metrics_csv(ckpt / "metrics.csv")
    vals = [v for v in m["val_loss"] if v == v]
    assert m["step"][0] == 0 and len(vals) == 4 and vals[-1] < vals[0]
    student, tok, meta = load_model("base", "cpu", "eval", model_tag="hybrid-t4", base_dir=world["base"])
    assert student.config.block_pattern == ["T", "T", "M", "M"] and tok.content_hash() == world["tok"].content_hash()
    lin = meta["lineage"]
    assert lin["teacher"]["model_tag"] == "t4" and lin["teacher"]["step"] == 5 and lin["teacher"]["block_pattern"] == ["T"] * 4
    assert (lin["block_pattern"], lin["steps"], lin["init"], lin["replaced_layers"]) == (["T", "T", "M", "M"], 12, "attention", [2, 3])
    x = torch.tensor([tok.encode("Some text about an entity.", prepend="<|bos|>")])
    with torch.no_grad():
        assert kl_to_teacher(student(x), world["teacher"](x)).item() < 5.0


def test_resume_after_kill_matches_an_uninterrupted_run(world):
    full = hybridize.main(args(world, "--steps", "6", "--eval_every", "-1", "--output_tag", "full",
                               "--hidden_weight", "0.5", "--train", "mixers"))
    part_args = args(world, "--steps", "6", "--eval_every", "-1", "--output_tag", "part", "--hidden_weight", "0.5",
                     "--train", "mixers", "--save_every", "3")
    hybridize.main(part_args + ["--stop_at_step", "3"])
    part = hybridize.main(part_args + ["--resume"])
    a, b = read_metrics_csv(full / "metrics.csv"), read_metrics_csv(part / "metrics.csv")
    assert a["step"] == b["step"] == [0, 1, 2, 3, 4, 5, 6]  # row 0: the validation KL before any step
    assert b["loss"][1:] == pytest.approx(a["loss"][1:], rel=1e-5, abs=1e-6)
    sa = torch.load(full / "model_000006.pt", weights_only=True)
    sb = torch.load(part / "model_000006.pt", weights_only=True)
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)
    # --train mixers: only the replaced layers' mixers moved
    teacher = world["teacher"].state_dict()
    assert torch.equal(sa["transformer.h.2.mlp.c_fc.weight"], teacher["transformer.h.2.mlp.c_fc.weight"])
    assert torch.equal(sa["transformer.wte.weight"], teacher["transformer.wte.weight"])


def test_an_upstream_jul_2026_model_hybridizes(world, tmp_path):
    """Upstream's checkpoint (value embeddings, smear, windows...) as the teacher; layer 1 loses its value embedding."""
    shutil.copytree(FIXTURES / "2026-07-92d63d4" / "base_checkpoints", tmp_path / "base_checkpoints")
    shutil.copytree(FIXTURES / "2026-07-92d63d4" / "tokenizer", tmp_path / "tokenizer")
    a = args(world, "--steps", "3", "--eval_every", "-1")
    a[a.index("--model_tag") + 1], a[a.index("--block_pattern") + 1] = "d4", "T,M,T,T"
    a[a.index("--base_dir") + 1] = str(tmp_path)
    ckpt = hybridize.main(a + ["--output_base_dir", str(tmp_path / "mine")])  # the user's base dir stays as it was
    assert ckpt == tmp_path / "mine" / "base_checkpoints" / "hybrid-d4" and not (tmp_path / "base_checkpoints" / "hybrid-d4").exists()
    student, tok, meta = load_model("base", "cpu", "eval", model_tag="hybrid-d4", base_dir=tmp_path / "mine")
    assert meta["lineage"]["teacher"]["era"] == "2026-07" and "era" not in meta
    assert sorted(student.value_embeds) == ["3"] and student.transformer.h[1].kind == "M"
    assert student.config.smear and student.config.window_pattern == "SSSL" and student.config.vocab_size == 308
    assert meta["tokenizer"]["origin"]["format"] == "tiktoken-pickle"  # upstream ids, recorded with the checkpoint
    assert tok.get_bos_token_id() == 291 and tok.encode_special("<|doc_start|>") == 304


@pytest.mark.slow
def test_torchrun_two_ranks(world):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "scripts.hybridize",
           *args(world, "--steps", "2", "--eval_every", "-1", "--output_tag", "ddp")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    model, _, meta = load_model("base", "cpu", "eval", model_tag="ddp", base_dir=world["base"])
    assert meta["lineage"]["steps"] == 2 and model.config.block_pattern == ["T", "T", "M", "M"]


def test_periodic_checkpoints_keep_the_newest(world):
    """--save_every 0 = about four checkpoints per run (the workflow's cadence), --keep_last prunes older ones."""
    ckpt = hybridize.main(args(world, "--steps", "8", "--eval_every", "-1", "--output_tag", "cadence",
                               "--save_every", "0", "--keep_last", "2"))
    assert sorted(p.name for p in ckpt.glob("model_*.pt")) == ["model_000006.pt", "model_000008.pt"]
    assert sorted(p.name for p in ckpt.glob("train_state_*.pt")) == ["train_state_000006_rank0.pt",
                                                                     "train_state_000008_rank0.pt"]
