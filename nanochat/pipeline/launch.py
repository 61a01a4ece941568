"""What a training rule needs around its launcher: torchrun (behind a parent-death guard), done-markers of
trainings, and a resume that never continues from stale checkpoints."""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import shutil
from pathlib import Path

from nanochat.common import atomic_write_json, setup_logging, sha256_file

FINGERPRINT_FILE = "workflow_fingerprint.json"
logger = logging.getLogger(__name__)
GUARD = "python -m nanochat.pipeline.launch guard"  # exec a command with a parent-death signal


LAUNCH = "python -m nanochat.pipeline.launch torchrun"
RDZV_PORT = 29500


def torchrun_prefix(gpus: int, nodes: int = 1, device: str = "auto") -> str:
    """The launcher a fine-tune rule puts in front of `-m scripts.*_finetune ...` (the command's text).

    The process layout is decided where the job runs (`torchrun_argv`): GPUs per node = the run's train.gpus when
    that many are visible there (one CPU process when none is and device is auto; `device: cpu` runs train.gpus
    CPU processes); several nodes = one srun task per node, meeting through torchrun's c10d rendezvous.
    """
    return f"{LAUNCH} --gpus {max(1, int(gpus or 0))} --nodes {max(1, int(nodes or 1))} --device {device} --"


def visible_gpus() -> int:
    try:
        import torch
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def local_nproc(gpus: int, device: str = "auto", visible: int | None = None) -> int:
    """Processes on this node: `gpus` on GPUs (all of them must be visible), 1 on a CPU-only node under device
    auto (the DAG still runs there), `gpus` CPU processes (gloo) under device cpu."""
    gpus = max(1, int(gpus))
    if device == "cpu":
        return gpus
    visible = visible_gpus() if visible is None else visible
    if visible >= gpus:
        return gpus
    if visible == 0 and device == "auto":
        logger.warning("launch: no GPU visible on this node; running 1 CPU process instead of %d", gpus)
        return 1
    raise SystemExit(f"launch: the run asks for {gpus} GPU(s) per node (runs.<run>.train.gpus), {visible} visible here"
                     + ("" if visible else " (device: cuda)"))


def slurm_head_node(job_id: str) -> str:
    """First node of a SLURM allocation (squeue: the job step strips SLURM_JOB_NODELIST)."""
    import subprocess
    nodes = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%N"], capture_output=True, text=True,
                           check=True).stdout.strip()
    return subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                          check=True).stdout.split()[0]


def rdzv_port(job_id) -> int:
    """A rendezvous port per job, so two multi-node jobs sharing a head node do not collide."""
    return RDZV_PORT + int(job_id) % 20_000


def torchrun_argv(gpus: int, nodes: int, device: str, rest: list[str], env=None, visible: int | None = None,
                  head: str | None = None) -> list[str]:
    """The command this node runs.

    One node: `torchrun --standalone --nproc_per_node=P ...`.
    Several nodes, in the SLURM job (no SLURM_PROCID yet): `srun --ntasks=N --kill-on-bad-exit=1 <this launcher>`,
    one task per node of the allocation (sbatch --nodes=N --ntasks=N); each task (SLURM_PROCID set) then runs
    `torchrun --nnodes=N --nproc_per_node=P --rdzv_backend=c10d --rdzv_id=JOB --rdzv_endpoint=HEAD:PORT ...`.
    """
    env = os.environ if env is None else env
    if nodes <= 1:
        return ["torchrun", "--standalone", f"--nproc_per_node={local_nproc(gpus, device, visible)}", *rest]
    job = env.get("SLURM_JOB_ID")
    if not job:
        raise SystemExit(f"launch: a {nodes}-node run needs a SLURM allocation (snakemake --profile profiles/slurm); "
                         "set runs.<run>.train.nodes to 1 to train on this machine")
    if "SLURM_PROCID" not in env:
        head = head or slurm_head_node(job)
        return ["srun", f"--ntasks={nodes}", "--kill-on-bad-exit=1", *LAUNCH.split()[:-1], "torchrun",
                "--gpus", str(gpus), "--nodes", str(nodes), "--device", device, "--head", head, "--", *rest]
    return ["torchrun", f"--nnodes={nodes}", f"--nproc_per_node={local_nproc(gpus, device, visible)}",
            "--rdzv_backend=c10d", f"--rdzv_id={job}", f"--rdzv_endpoint={head}:{rdzv_port(job)}", *rest]


def _last_step(checkpoint_dir: Path) -> int:
    steps = [int(p.stem.split("_")[-1]) for p in checkpoint_dir.glob("model_*.pt") if p.stem.split("_")[-1].isdigit()]
    if not steps:
        raise FileNotFoundError(f"no model_<step>.pt in {checkpoint_dir}: training did not save a checkpoint")
    return max(steps)

def mark_checkpoint(checkpoint_dir, output) -> dict:
    """Write the done-marker of a finished training: last step, its meta and the weights' sha256 (atomically)."""
    checkpoint_dir = Path(checkpoint_dir)
    step = _last_step(checkpoint_dir)
    model_file = next(p for p in checkpoint_dir.glob("model_*.pt") if p.stem.endswith(f"{step:06d}") or
                      int(p.stem.split("_")[-1]) == step)
    meta_files = [p for p in checkpoint_dir.glob("meta_*.json") if p.stem.split("_")[-1].isdigit()
                  and int(p.stem.split("_")[-1]) == step]
    meta = json.loads(meta_files[0].read_text()) if meta_files else {}
    marker = {"checkpoint_dir": str(checkpoint_dir), "step": step, "model_file": model_file.name,
              "model_sha256": sha256_file(model_file), "kb_id": meta.get("kb_id"), "meta": meta}
    atomic_write_json(output, marker)
    return marker

def resume_settings(settings: str) -> str:
    """The training flags that decide what is learned: the checkpoint cadence flags left out, so that saving more
    or less often never throws a partial run away."""
    from nanochat.train.checkpoints import CHECKPOINT_CADENCE_FLAGS
    words, kept = shlex.split(settings), []
    i = 0
    while i < len(words):
        flag = words[i].split("=", 1)[0].replace("-", "_").replace("__", "--", 1)
        if flag in CHECKPOINT_CADENCE_FLAGS:
            i += 1 if "=" in words[i] else 2
            continue
        kept.append(words[i])
        i += 1
    return shlex.join(kept)

def fingerprint(inputs: list, settings: str) -> str:
    """sha256 over the input files' contents and the training flags (cadence flags aside)."""
    h = hashlib.sha256(resume_settings(settings).encode("utf-8"))
    for f in inputs:
        h.update(str(f).encode("utf-8") + b"\0" + sha256_file(f).encode("ascii"))
    return h.hexdigest()

def prepare_resume(checkpoint_dir, inputs: list, settings: str) -> bool:
    """Make `--resume` safe: keep checkpoints only when they came from the same inputs and settings.

    Returns True when the existing checkpoints match (the library resumes from them). Otherwise any previous
    content is moved to `<dir>.stale/` (replacing an older one) and training starts fresh.
    """
    from nanochat.train.checkpoints import describe_holder, lock_holder
    checkpoint_dir = Path(checkpoint_dir)
    holder = lock_holder(checkpoint_dir) if checkpoint_dir.is_dir() else None
    if holder:  # never move or resume a directory a live trainer is writing (e.g. one orphaned by a killed run)
        raise SystemExit(f"prepare_resume: {checkpoint_dir} is being written by another trainer "
                         f"({describe_holder(holder)}); stop it or wait for it, then re-run")
    fp = fingerprint(inputs, settings)
    stamp = checkpoint_dir / FINGERPRINT_FILE
    if stamp.is_file() and json.loads(stamp.read_text()).get("fingerprint") == fp:
        logger.info("prepare_resume: %s matches the current inputs; training resumes from it", checkpoint_dir)
        return True
    if checkpoint_dir.exists() and any(checkpoint_dir.iterdir()):
        stale = checkpoint_dir.with_name(checkpoint_dir.name + ".stale")
        if stale.exists():
            shutil.rmtree(stale)
        checkpoint_dir.rename(stale)
        logger.info("prepare_resume: inputs or settings changed; moved old checkpoints to %s", stale)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stamp, {"fingerprint": fp, "inputs": [str(f) for f in inputs], "settings": settings})
    return False


# -----------------------------------------------------------------------------
# CLI: the commands rules run around a training (python -m nanochat.pipeline.launch ...)

def add_commands(sub) -> None:
    p = sub.add_parser("prepare_resume", help="keep checkpoints only if inputs/settings are unchanged")
    p.add_argument("--checkpoint_dir", required=True)
    p.add_argument("--inputs", nargs="*", default=[])
    p.add_argument("--settings", default="")
    p = sub.add_parser("mark_checkpoint", help="write a done-marker for the last checkpoint of a directory")
    p.add_argument("--checkpoint_dir", required=True)
    p.add_argument("--output", required=True)
    p = sub.add_parser("guard", help="exec a command that gets SIGTERM when this process's parent dies")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="the command, e.g. torchrun --standalone ...")
    p = sub.add_parser("torchrun", help="exec torchrun for this node (guarded): GPUs per node, nodes through srun")
    p.add_argument("--gpus", type=int, default=1, help="processes per node (GPUs; see local_nproc)")
    p.add_argument("--nodes", type=int, default=1, help="nodes (> 1: one srun task per node, c10d rendezvous)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--head", default=None, help="rendezvous host (set by the srun step)")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- then torchrun's script arguments (-m scripts.X ...)")


def run_command(args) -> int:
    if args.command == "prepare_resume":
        prepare_resume(args.checkpoint_dir, args.inputs, args.settings)
    elif args.command == "mark_checkpoint":
        mark_checkpoint(args.checkpoint_dir, args.output)
    elif args.command == "guard":
        from nanochat.train.lifeline import exec_guarded
        exec_guarded(args.argv)
    elif args.command == "torchrun":
        from nanochat.train.lifeline import exec_guarded
        rest = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        argv = torchrun_argv(args.gpus, args.nodes, args.device, rest, head=args.head)
        logger.info("launch: %s", shlex.join(argv))
        exec_guarded(argv)
    return 0


def main(argv=None) -> int:
    from nanochat.cli import ArgumentParser
    parser = ArgumentParser(description="Training launch helpers (safe resume, done-markers, parent-death guard)")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    setup_logging()
    return run_command(args)


if __name__ == "__main__":
    raise SystemExit(main())
