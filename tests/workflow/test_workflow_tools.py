"""Unit tests of nanochat/pipeline/ (no Snakemake run needed).

    python -m pytest -q tests/workflow/test_workflow_tools.py
"""
import json
import os

import pytest
import torch

from nanochat.pipeline import config as wf_config
from nanochat.pipeline import launch as wf_launch
from nanochat.pipeline import report as wf_report


def _fake_checkpoint(d, step, value=1.0):
    d.mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.full((2,), value)}, d / f"model_{step:06d}.pt")
    (d / f"meta_{step:06d}.json").write_text(json.dumps({"step": step, "kb_id": "kb123"}))


def test_prepare_resume_keeps_matching_and_moves_stale(tmp_path):
    inp = tmp_path / "dataset.json"
    inp.write_text("v1")
    ckpt = tmp_path / "rag_checkpoints" / "run"
    assert wf_launch.prepare_resume(ckpt, [inp], "--top_k 3") is False  # nothing yet: fresh start, stamp written
    _fake_checkpoint(ckpt, 5)
    assert wf_launch.prepare_resume(ckpt, [inp], "--top_k 3") is True  # interrupted run, same inputs: resume
    assert (ckpt / "model_000005.pt").is_file()
    assert wf_launch.prepare_resume(ckpt, [inp], "--top_k 4") is False  # settings changed: old state moved aside
    assert not (ckpt / "model_000005.pt").exists()
    assert (ckpt.with_name("run.stale") / "model_000005.pt").is_file()
    inp.write_text("v2")
    _fake_checkpoint(ckpt, 7)
    assert wf_launch.prepare_resume(ckpt, [inp], "--top_k 4") is False  # input content changed
    assert (ckpt.with_name("run.stale") / "model_000007.pt").is_file()


def test_prepare_resume_keeps_a_partial_run_when_only_the_checkpoint_cadence_changed(tmp_path):
    inp = tmp_path / "dataset.json"
    inp.write_text("v1")
    ckpt = tmp_path / "rag_checkpoints" / "run"
    assert wf_launch.prepare_resume(ckpt, [inp], "--top_k 3 --save_every 0 --keep_last 2") is False
    _fake_checkpoint(ckpt, 5)
    assert wf_launch.prepare_resume(ckpt, [inp], "--top_k 3 --save_every 10 --save_every_minutes 5 --keep_last 0")
    assert (ckpt / "model_000005.pt").is_file()


def test_prepare_resume_refuses_a_directory_a_live_trainer_holds(tmp_path):
    from nanochat.train.checkpoints import TrainerLock
    inp = tmp_path / "dataset.json"
    inp.write_text("v1")
    ckpt = tmp_path / "rag_checkpoints" / "run"
    lock = TrainerLock(ckpt).acquire()
    try:
        with pytest.raises(SystemExit, match=rf"being written by another trainer \(pid {os.getpid()} on host"):
            wf_launch.prepare_resume(ckpt, [inp], "--top_k 4")
    finally:
        lock.release()
    assert wf_launch.prepare_resume(ckpt, [inp], "--top_k 4") is False


def test_mark_checkpoint_picks_last_step(tmp_path):
    ckpt = tmp_path / "base"
    _fake_checkpoint(ckpt, 3, 1.0)
    _fake_checkpoint(ckpt, 12, 2.0)
    marker = wf_launch.mark_checkpoint(ckpt, tmp_path / "m" / "base_model.json")
    on_disk = json.loads((tmp_path / "m" / "base_model.json").read_text())
    assert marker == on_disk
    assert on_disk["step"] == 12 and on_disk["model_file"] == "model_000012.pt" and on_disk["kb_id"] == "kb123"
    with pytest.raises(FileNotFoundError, match="no model_<step>.pt"):
        wf_launch.mark_checkpoint(tmp_path / "empty", tmp_path / "x.json")


def test_torchrun_prefix():
    """The text a fine-tune rule puts before -m scripts.*: the launcher decides the layout on the node
    (tests/workflow/test_scale.py checks the commands it runs)."""
    launch = "python -m nanochat.pipeline.launch torchrun "
    assert wf_launch.torchrun_prefix(0) == launch + "--gpus 1 --nodes 1 --device auto --"  # at least one process
    assert wf_launch.torchrun_prefix(8) == launch + "--gpus 8 --nodes 1 --device auto --"
    assert wf_launch.torchrun_prefix(4, nodes=2, device="cuda") == launch + "--gpus 4 --nodes 2 --device cuda --"


def test_finetune_args_and_hops():
    config = {"base_dir": "ck", "device": "cpu", "models": {"tiny": {"n_layer": 4}}, "runs": {"r": {
        "knowledge_base": "kb", "model": "tiny", "mode": "refrag", "retriever_type": "bm25", "top_k": 2,
        "max_hops": 3, "use_rewards": False,
        "train": {"num_epochs": 1, "max_steps": 5, "device_batch_size": 2, "max_seq_len": 64,
                  "max_doc_length": 50, "p_gold": 0.5, "seed": 1, "rl_steps": 3, "num_samples": 2,
                  "save_every": 0, "save_every_minutes": 30, "keep_last": 2}}}}
    args = wf_config.finetune_args(config, "r")
    assert "--model_tag kb.tiny --output_tag r --base_dir ck" in args
    assert "--save_every 0 --save_every_minutes 30 --keep_last 2" in args
    assert args.endswith("--max_hops 3 --top_k_per_hop 2 --hop_strategy entities --max_new_tokens 32 "
                         "--use_rewards false --rl_steps 3 --num_samples 2 --rl_lr_frac 0.1")
    assert wf_config.hop_args(config["runs"]["r"]) == "--max_hops 3 --top_k_per_hop 2 --strategy entities"
    config["runs"]["r"].update(hop_strategy="titles", evaluate={"max_new_tokens": 40})
    assert "--hop_strategy titles --max_new_tokens 40" in wf_config.finetune_args(config, "r")
    assert wf_config.hop_args(config["runs"]["r"]).endswith("--strategy titles")
    assert wf_config.hop_args({"mode": "rag"}) == "--max_hops 1"
    assert wf_config.dataset_args(config["runs"]["r"]) == ("--mode refrag --max_hops 3 --hop_strategy titles "
                                                           "--negatives no_gold --p_first_hop 0.0")
    assert wf_config.dataset_args({"mode": "rag"}) == "--mode rag --negatives no_gold --cite after"
    assert wf_config.dataset_args({"mode": "rag", "train": {"negatives": "answer_doc", "p_gold_multihop": 0.2}}) == \
        "--mode rag --negatives answer_doc --cite after --p_gold_multihop 0.2"
    assert wf_config.dataset_args({"mode": "rag", "train": {"p_gold_multihop": None}}).endswith("--cite after")
    assert wf_config.finetune_done_path(config, "r") == "ck/refrag_checkpoints/r/done.json"


def test_collect_metrics_requires_kb_id(tmp_path):
    m1, m2 = tmp_path / "a.json", tmp_path / "b.json"
    m1.write_text(json.dumps({"kb_id": "k1", "exact_match": 0.5, "f1": 0.6, "n": 10}))
    m2.write_text(json.dumps({"kb_id": "k1", "exact_match": 0.25, "f1": 0.4, "n": 10}))
    df = wf_report.collect_metrics([m1, m2], ["a", "b"], tmp_path / "r" / "m.csv", tmp_path / "r" / "m.png")
    assert list(df["run"]) == ["a", "b"] and list(df["f1"]) == [0.6, 0.4]
    assert (tmp_path / "r" / "m.png").read_bytes()[:4] == b"\x89PNG"
    m2.write_text(json.dumps({"f1": 0.4}))
    with pytest.raises(ValueError, match="field 'kb_id' missing"):
        wf_report.collect_metrics([m1, m2], ["a", "b"], tmp_path / "m.csv", tmp_path / "m.png")
