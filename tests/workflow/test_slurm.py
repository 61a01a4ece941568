"""The SLURM profile submits real jobs to a single-node SLURM on localhost (.ci/slurm_setup.sh).

    bash .ci/slurm_setup.sh && python -m pytest -q tests/workflow/test_slurm.py

Starts the daemons itself when none answer (and stops those, by PID, afterwards); skips only where the
slurm-wlm/munge packages cannot be installed.
"""
import os
import shutil
import subprocess

import pytest
import yaml

from wfhelpers import ROOT, TINY, copy_workflow, snakemake

STATE = os.environ.get("SLURM_STATE_DIR", "/tmp/nanochat-slurm")


def slurm_up() -> bool:
    return shutil.which("sinfo") is not None and subprocess.run(
        ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.strip() in ("idle", "mixed", "allocated")


@pytest.fixture(scope="module")
def slurm():
    started = False
    if not slurm_up():
        proc = subprocess.run(["bash", str(ROOT / ".ci/slurm_setup.sh")], capture_output=True, text=True)
        if proc.returncode != 0:
            if not shutil.which("slurmctld"):
                pytest.skip(f"slurm-wlm/munge could not be installed with apt-get: {proc.stderr[-500:]}")
            raise AssertionError(f".ci/slurm_setup.sh failed:\n{proc.stdout}\n{proc.stderr}")
        started = True
    yield
    if started:
        subprocess.run(["bash", str(ROOT / ".ci/slurm_setup.sh"), "stop"], check=True)


def test_profile_is_valid_yaml_with_required_settings():
    prof = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert prof["executor"] == "slurm" and prof["slurm-status-command"] == "squeue"
    assert prof["default-resources"]["slurm_account"] and prof["default-resources"]["slurm_partition"]
    assert prof["set-resources"]["base_train"]["gpu"] >= 1
    # fine-tunes take gpu/nodes from their run (rules/train.smk); a profile value would override every run's
    assert not {"gpu", "nodes"} & (set(prof["set-resources"]["rag_finetune"]) | set(prof["set-resources"]["refrag_finetune"]))


def test_fine_tunes_get_a_checkpoint_signal_before_the_time_limit_and_are_requeued():
    """SIGUSR1 5 minutes before the limit (the trainer checkpoints and exits; a retry resumes), requeue on preemption;
    the plugin's own check accepts the extra sbatch option."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra
    prof = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert prof["slurm-requeue"] is True and prof["retries"] >= 1
    for rule in ("rag_finetune", "refrag_finetune"):
        extra = prof["set-resources"][rule]["slurm_extra"].strip("'")
        assert extra.startswith("--signal=USR1@")
        validate_slurm_extra(SimpleNamespace(resources=SimpleNamespace(slurm_extra=extra)))


@pytest.mark.slow
def test_tiny_dag_part_runs_through_slurm(slurm, tmp_path):
    work = copy_workflow(tmp_path)
    target = "results/runs/tiny_rag/leakage.json"  # synthetic_world -> check_leakage: two SLURM jobs
    proc = snakemake(work, target, "--profile", "profiles/slurm", "--configfile", TINY, "--replace-workflow-config",
                     timeout=300)
    assert proc.stdout.count("has been submitted with SLURM jobid") == 2, proc.stdout[-3000:]
    assert (work / target).is_file() and (work / "results/synthetic/manifest.json").is_file()
    logs = list((work / "logs/slurm").rglob("*.log"))
    assert logs, "no SLURM job logs under logs/slurm"


@pytest.mark.slow
def test_multi_node_fine_tune_runs_srun_and_torchrun_rendezvous_with_two_processes(slurm, tmp_path):
    """A run with train.nodes: 2 on the single-node CI cluster: its SLURM job (sbatch --ntasks=2, MPI-style) starts
    `srun --ntasks=2` of the launcher, each task a torchrun agent meeting the other through c10d rendezvous;
    2 training processes in all. The cluster has one node, so the test squeezes both agents onto it
    (--set-resources rag_finetune:nodes=1); the commands are the ones a 2-node allocation runs."""
    work = copy_workflow(tmp_path)
    config = yaml.safe_load((ROOT / TINY).read_text())
    config["runs"]["tiny_rag"]["train"].update(gpus=1, nodes=2, max_steps=2)
    (work / "multi.yaml").write_text(yaml.safe_dump(config))
    cfg = ["--configfile", "multi.yaml", "--replace-workflow-config"]
    snakemake(work, "--cores", "2", *cfg, "results/runs/tiny_rag/dataset/manifest.json",
              "results/models/tiny/nano/base_model.json", timeout=600)  # upstream of the fine-tune: locally
    done = "results/checkpoints/rag_checkpoints/tiny_rag/done.json"
    proc = snakemake(work, "--profile", "profiles/slurm", *cfg, "--set-resources", "rag_finetune:nodes=1",
                     "rag_finetune:cpus_per_task=1", "rag_finetune:mem_mb=2000", "--", done, timeout=600)
    assert proc.stdout.count("has been submitted with SLURM jobid") == 1, proc.stdout[-3000:]
    assert (work / done).is_file()
    log = (work / "logs/rag_finetune/tiny_rag.log").read_text()
    assert "launch: srun --ntasks=2 --kill-on-bad-exit=1 python -m nanochat.pipeline.launch torchrun --gpus 1 --nodes 2" in log
    agents = [line for line in log.splitlines() if "launch: torchrun --nnodes=2 --nproc_per_node=1 --rdzv_backend=c10d" in line]
    assert len(agents) == 2, log[-3000:]
    assert "batch 4x1x2" in log  # world size 2: the two agents met
