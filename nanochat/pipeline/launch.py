"""What a rule needs around a library entry point: imports from the checkout, the job's log, torchrun,
done-markers of trainings, and a resume that never continues from stale checkpoints."""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from nanochat.common import atomic_write_json, sha256_file

FINGERPRINT_FILE = "workflow_fingerprint.json"
GUARD = "python -m nanochat.pipeline guard"  # exec the launcher with a parent-death signal


def torchrun_prefix(gpus: int, nodes: int = 1, port: int = 29500) -> str:
    """The launcher in front of `-m scripts.*_finetune`.

    One node: `torchrun --standalone --nproc_per_node=N` with N = the rule's gpu resource (1 process on CPU).
    Several nodes (SLURM job with resources nodes>1): one torchrun per node through srun, meeting at the first
    node of the allocation. The executor plugin's job step strips most SLURM_* variables, so the node list is
    read back from squeue.
    """
    nproc = max(1, int(gpus or 0))
    if int(nodes or 1) <= 1:
        return f"{GUARD} torchrun --standalone --nproc_per_node={nproc}"
    head = "$(scontrol show hostnames $(squeue -h -j $SLURM_JOB_ID -o %N) | head -n 1)"
    return (f"{GUARD} srun --nodes={nodes} --ntasks-per-node=1 torchrun --nnodes={nodes} --nproc_per_node={nproc}"
            f" --rdzv_backend=c10d --rdzv_id=$SLURM_JOB_ID --rdzv_endpoint={head}:{port}")

def use_checkout(basedir) -> None:
    """Let every job import nanochat/ and scripts/ from this checkout (PYTHONPATH is inherited by jobs)."""
    paths = [str(basedir)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))

def code_files(basedir, *modules: str) -> list[str]:
    """Source files of dotted modules (a package means all its .py files), relative to the working directory.

    Modules that do not exist (yet) are skipped so that the DAG still builds while a module is being written.
    """
    basedir, files = Path(basedir), []
    for mod in modules:
        path = basedir.joinpath(*mod.split("."))
        if path.is_dir():
            files += sorted(str(p) for p in path.rglob("*.py"))
        elif path.with_suffix(".py").is_file():
            files.append(str(path.with_suffix(".py")))
    cwd = Path.cwd().resolve()
    rel = []
    for f in files:
        p = Path(f).resolve()
        rel.append(str(p.relative_to(cwd)) if p.is_relative_to(cwd) else str(p))
    return rel

@contextlib.contextmanager
def log_to(path):
    """Send this process's stdout and stderr (file descriptors too, so C extensions and tqdm) to a log file."""
    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", buffering=1, encoding="utf-8") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])

def call_main(smk, module: str, argv: list) -> None:
    """Run `<module>.main(argv)` with the job's log as stdout/stderr; a non-zero return fails the job."""
    log = smk.log[0] if len(smk.log) else None
    if log:
        Path(log).unlink(missing_ok=True)
    with log_to(log):
        rc = importlib.import_module(module).main([str(a) for a in argv])
    if rc not in (None, 0) and not isinstance(rc, (Path, str, dict)):
        raise SystemExit(f"{module} exited with status {rc} (see {log})")

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
    from nanochat.train.args import CHECKPOINT_CADENCE_FLAGS
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
        print(f"prepare_resume: {checkpoint_dir} matches the current inputs; training resumes from it", flush=True)
        return True
    if checkpoint_dir.exists() and any(checkpoint_dir.iterdir()):
        stale = checkpoint_dir.with_name(checkpoint_dir.name + ".stale")
        if stale.exists():
            shutil.rmtree(stale)
        checkpoint_dir.rename(stale)
        print(f"prepare_resume: inputs or settings changed; moved old checkpoints to {stale}", flush=True)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stamp, {"fingerprint": fp, "inputs": [str(f) for f in inputs], "settings": settings})
    return False
