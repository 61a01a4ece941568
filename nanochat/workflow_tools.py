"""Workflow helpers: the logic behind rules/*.smk and the dvc.yaml generator, kept here so tests reach it.

Snakemake owns the DAG. This module holds the path conventions and config arithmetic the rules share,
the glue a rule needs around a library CLI (log redirection, checkpoint done-markers, safe --resume),
the cross-run report, and `dvc.yaml` generation from Snakemake's own job table:

    python -m nanochat.workflow_tools dvc --check        # fails when dvc.yaml differs from the generator
    python -m nanochat.workflow_tools dvc                # (re)writes dvc.yaml
    python -m nanochat.workflow_tools prepare_resume --checkpoint_dir D --inputs F.. --settings "..."
"""
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

from nanochat.cli import ArgumentParser
from nanochat.common import atomic_path, atomic_write_json, sha256_file

TEXT_KB_TYPE = "simple"  # the index the tokenizer and base model read text from (cheapest to build)
EMBEDDING_KB_TYPES = ("dense", "hybrid")  # index types that need embeddings.npy
FINGERPRINT_FILE = "workflow_fingerprint.json"


# -----------------------------------------------------------------------------
# Config lookups and cross-references (the schema checks types; this checks names point somewhere)

def get_path(d: dict, dpath: str):
    """d["a"]["b"] for dpath "a/b"."""
    for key in dpath.split("/"):
        d = d[key]
    return d


def check_config_references(config: dict) -> None:
    """Every run names an existing knowledge base and model size, and k_max >= top_k."""
    problems = []
    for name, run in config["runs"].items():
        if run["knowledge_base"] not in config["knowledge_bases"]:
            problems.append(f"runs.{name}.knowledge_base: '{run['knowledge_base']}' is not a key of knowledge_bases "
                            f"(known: {', '.join(sorted(config['knowledge_bases']))})")
        if run["model"] not in config["models"]:
            problems.append(f"runs.{name}.model: '{run['model']}' is not a key of models "
                            f"(known: {', '.join(sorted(config['models']))})")
        rag_runs = sorted(r for r, c in config["runs"].items() if c.get("mode", "rag") == "rag")
        for key in ("compare_with", "init_from"):
            other = run.get(key)
            if other is not None and other not in rag_runs:
                problems.append(f"runs.{name}.{key}: '{other}' is not a rag run (rag runs: {', '.join(rag_runs) or 'none'})")
            if other is not None and run.get("mode", "rag") != "refrag":
                problems.append(f"runs.{name}.{key}: only refrag runs name a rag run here")
            if other is not None and other in rag_runs and config["runs"][other]["knowledge_base"] != run["knowledge_base"]:
                problems.append(f"runs.{name}.{key}: '{other}' uses knowledge base "
                                f"'{config['runs'][other]['knowledge_base']}', this run '{run['knowledge_base']}'")
        if run.get("k_max", 20) < run.get("top_k", 5):
            problems.append(f"runs.{name}: k_max={run['k_max']} is smaller than top_k={run['top_k']}")
    if problems:
        raise ValueError("invalid workflow config:\n  " + "\n  ".join(problems))


def base_model_tag(kb: str, size: str) -> str:
    """Checkpoint tag of the base model for one KB and size (names cannot contain dots, so this is unique)."""
    return f"{kb}.{size}"


def start_model_done(config: dict, run: str) -> str:
    """Done-marker of the model a run starts from: the init_from rag run's, else the base model's."""
    r = config["runs"][run]
    if r.get("init_from"):
        return finetune_done_path(config, r["init_from"])
    return f"results/models/{r['knowledge_base']}/{r['model']}/base_model.json"


def finetune_done_path(config: dict, run: str) -> str:
    """done.json written last by scripts.{rag,refrag}_finetune into the run's checkpoint directory."""
    mode = config["runs"][run]["mode"]
    return f"{config['base_dir']}/{mode}_checkpoints/{run}/done.json"


def hop_args(run: dict) -> str:
    """Precompute flags: multi-hop (top_k per hop) for refrag, one hop for rag."""
    if run.get("mode", "rag") == "refrag":
        return (f"--max_hops {run['max_hops']} --top_k_per_hop {run['top_k']} "
                f"--strategy {run.get('hop_strategy', 'entities')}")
    return "--max_hops 1"


def finetune_args(config: dict, run_name: str) -> str:
    """Flags of scripts.{rag,refrag}_finetune for one run (besides KB, dataset and --resume)."""
    run = config["runs"][run_name]
    t = run["train"]
    start = run.get("init_from")  # refrag on top of a rag run's model, else the base model
    source = ["--source", "rag", "--model_tag", start] if start else \
        ["--source", "base", "--model_tag", base_model_tag(run["knowledge_base"], run["model"])]
    args = [*source,
            "--output_tag", run_name, "--base_dir", config["base_dir"], "--device", config["device"],
            "--retriever_type", run["retriever_type"], "--top_k", run["top_k"],
            "--num_epochs", t["num_epochs"], "--max_steps", t["max_steps"],
            "--device_batch_size", t["device_batch_size"], "--max_seq_len", t["max_seq_len"],
            "--max_doc_length", t["max_doc_length"], "--p_gold", t["p_gold"], "--seed", t["seed"]]
    if run["mode"] == "refrag":
        args += ["--max_hops", run["max_hops"], "--top_k_per_hop", run["top_k"],
                 "--hop_strategy", run.get("hop_strategy", "entities"),
                 "--max_new_tokens", run.get("evaluate", {}).get("max_new_tokens", 32),
                 "--use_rewards", str(run["use_rewards"]).lower(), "--rl_steps", t["rl_steps"],
                 "--num_samples", t["num_samples"], "--rl_lr_frac", t.get("rl_lr_frac", 0.1)]
    return " ".join(shlex.quote(str(a)) for a in args)


def torchrun_prefix(gpus: int, nodes: int = 1, port: int = 29500) -> str:
    """The launcher in front of `-m scripts.*_finetune`.

    One node: `torchrun --standalone --nproc_per_node=N` with N = the rule's gpu resource (1 process on CPU).
    Several nodes (SLURM job with resources nodes>1): one torchrun per node through srun, meeting at the first
    node of the allocation. The executor plugin's job step strips most SLURM_* variables, so the node list is
    read back from squeue.
    """
    nproc = max(1, int(gpus or 0))
    if int(nodes or 1) <= 1:
        return f"torchrun --standalone --nproc_per_node={nproc}"
    head = "$(scontrol show hostnames $(squeue -h -j $SLURM_JOB_ID -o %N) | head -n 1)"
    return (f"srun --nodes={nodes} --ntasks-per-node=1 torchrun --nnodes={nodes} --nproc_per_node={nproc}"
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


# -----------------------------------------------------------------------------
# Glue around library CLIs

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


def fingerprint(inputs: list, settings: str) -> str:
    """sha256 over the input files' contents and the training flags."""
    h = hashlib.sha256(settings.encode("utf-8"))
    for f in inputs:
        h.update(str(f).encode("utf-8") + b"\0" + sha256_file(f).encode("ascii"))
    return h.hexdigest()


def prepare_resume(checkpoint_dir, inputs: list, settings: str) -> bool:
    """Make `--resume` safe: keep checkpoints only when they came from the same inputs and settings.

    Returns True when the existing checkpoints match (the library resumes from them). Otherwise any previous
    content is moved to `<dir>.stale/` (replacing an older one) and training starts fresh.
    """
    checkpoint_dir = Path(checkpoint_dir)
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


# -----------------------------------------------------------------------------
# Cross-run report

REPORT_COLUMNS = ["em", "exact_match", "f1", "citation_precision", "citation_recall", "recall@k"]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
    return out


def collect_metrics(metrics_files: list, runs: list, table_path, plot_path) -> "pd.DataFrame":
    """One row per run (flattened metrics.json, kb_id required) -> CSV, and a grouped bar chart of the scores."""
    import pandas as pd
    if len(metrics_files) != len(runs):
        raise ValueError(f"{len(metrics_files)} metrics files for {len(runs)} runs")
    rows = []
    for run, path in zip(runs, metrics_files):
        metrics = json.loads(Path(path).read_text(encoding="utf-8"))
        flat = _flatten(metrics)
        if not flat.get("kb_id"):
            raise ValueError(f"{path}: field 'kb_id' missing: every metrics file must name the knowledge base it used")
        rows.append({"run": run, **flat})
    df = pd.DataFrame(rows)
    with atomic_path(table_path) as tmp:
        df.to_csv(tmp, index=False)
    _plot_scores(df, plot_path)
    print(f"report: {len(df)} runs -> {table_path}, {plot_path}", flush=True)
    return df


def _plot_scores(df, plot_path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    numeric = [c for c in df.columns if c not in ("run", "kb_id") and df[c].dtype.kind in "if"
               and df[c].between(0, 1).all()]
    preferred = [c for c in numeric if c.split(".")[-1] in REPORT_COLUMNS] or numeric
    cols = preferred[:8]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cols) * max(1, len(df))), 4))
    width = 0.8 / max(1, len(df))
    for i, (_, row) in enumerate(df.iterrows()):
        ax.bar([j + i * width for j in range(len(cols))], [row[c] for c in cols], width, label=row["run"])
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))], cols, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.set_title("held-out metrics per run")
    ax.legend()
    fig.tight_layout()
    with atomic_path(plot_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# -----------------------------------------------------------------------------
# dvc.yaml, generated from Snakemake's job table (Snakemake owns the DAG; DVC gets a coarse mirror)

DVC_HEADER = """\
# GENERATED by `python -m nanochat.workflow_tools dvc` from the Snakemake DAG: do not edit by hand.
# tests/workflow/test_dvc.py fails when this file differs from the generator's output.
# One stage per rules/<stage>.smk; each runs only its own rules (--allowed-rules) so that DVC, not
# Snakemake, decides what upstream work is reused. After `dvc checkout` or `dvc pull`, run
# `snakemake --touch --cores 1` so Snakemake accepts the restored files as up to date.
"""
# Config sections each stage reads (DVC `params:`); the DAG itself comes from Snakemake.
STAGE_PARAMS = {
    "documents": ["synthetic", "knowledge_bases"],
    "knowledge_base": ["knowledge_bases"],
    "model": ["base_dir", "device", "tokenizer", "models"],
    "retrieval": ["runs", "leakage"],
    "dataset": ["runs"],
    "train": ["base_dir", "device", "runs"],
    "evaluate": ["base_dir", "device", "runs"],
    "report": [],
}
DIR_PARAMS = ("outdir", "checkpoint_dir")  # a job param naming a directory it fills: DVC tracks the directory


def snakemake_jobs(snakefile="Snakefile", configfile="config/config.yaml", workdir=".") -> list[dict]:
    """Every job of the full DAG (as with --forceall): rule, rule file, wrapper script, inputs, outputs, params."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (ConfigSettings, DAGSettings, OutputSettings, Quietness,
                                          ResourceSettings, StorageSettings)
    workdir = Path(workdir).resolve()
    with contextlib.chdir(workdir), SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        wf = api.workflow(resource_settings=ResourceSettings(), storage_settings=StorageSettings(),
                          config_settings=ConfigSettings(configfiles=[workdir / configfile],
                                                                replace_workflow_config=True),
                          snakefile=workdir / snakefile, workdir=workdir)
        wf.dag(dag_settings=DAGSettings(forceall=True))
        workflow = wf._workflow  # pinned snakemake==9.27.1; the DVC parity test catches API drift
        workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True)
        workflow._build_dag()
        jobs = []
        for job in workflow.dag.jobs:
            rule_file = Path(job.rule.snakefile)
            script = job.rule.script and os.path.relpath((rule_file.parent / job.rule.script).resolve(), workdir)
            jobs.append({"rule": job.rule.name, "stage": rule_file.stem, "rule_file": os.path.relpath(rule_file, workdir),
                         "script": script, "input": [str(f) for f in job.input], "output": [str(f) for f in job.output],
                         "params": {k: v for k, v in job.params.items() if isinstance(v, (str, int, float))}})
    return sorted(jobs, key=lambda j: (j["rule"], j["output"]))


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def dvc_stages(jobs: list[dict], configfile: str = "config/config.yaml") -> dict:
    """Group jobs by rule file into DVC stages: cmd, deps (code + external inputs), params, outs, metrics."""
    jobs = [j for j in jobs if j["rule"] != "all"]
    order = list(dict.fromkeys(j["stage"] for j in jobs))
    stage_order = [s for s in STAGE_PARAMS if s in order] + [s for s in order if s not in STAGE_PARAMS]
    out_dirs = {j["params"][k] for j in jobs for k in DIR_PARAMS if k in j["params"]}
    stages = {}
    for stage in stage_order:
        sjobs = [j for j in jobs if j["stage"] == stage]
        produced = {f for j in sjobs for f in j["output"]}
        rules = sorted({j["rule"] for j in sjobs})
        targets = sorted(produced)
        own_dirs = sorted({j["params"][k] for j in sjobs for k in DIR_PARAMS if k in j["params"]})
        outs, metrics = [], []
        for j in sjobs:
            for f in j["output"]:
                if any(_under(f, d) for d in own_dirs):
                    continue
                (metrics if f.endswith("metrics.json") else outs).append(f)
        outs = sorted(set(outs) | set(own_dirs))
        code = {j["rule_file"] for j in sjobs} | {j["script"] for j in sjobs if j["script"]}
        deps = set()
        for j in sjobs:
            for f in j["input"]:
                if f in produced or any(_under(f, d) for d in own_dirs):
                    continue
                deps.add(next((d for d in sorted(out_dirs) if _under(f, d)), f))
        cmd = " ".join(["snakemake", *(shlex.quote(t) for t in targets), "--configfile", configfile,
                        "--replace-workflow-config --cores all --allowed-rules", *rules])
        st = {"cmd": cmd, "deps": sorted(deps | code)}
        params = STAGE_PARAMS.get(stage, [])
        if params:
            st["params"] = [{configfile: params}]
        st["outs"] = outs
        if metrics:
            st["metrics"] = sorted(metrics)
        stages[stage] = st
    return stages


def dvc_plots(jobs: list[dict]) -> list:
    """Top-level plots: the cross-run scores table and each run's training curve."""
    plots = []
    for j in jobs:
        if j["rule"] == "report":
            table = next(f for f in j["output"] if f.endswith(".csv"))
            plots.append({table: {"x": "f1", "y": "run", "template": "bar_horizontal",
                                  "title": "held-out F1 per run"}})
        if "checkpoint_dir" in j["params"] and j["rule"].endswith("finetune"):
            plots.append({f"{j['params']['checkpoint_dir']}/metrics.csv": {"x": "step", "y": "loss",
                                                                           "title": f"training loss: {j['rule']}"}})
    return plots


def render_dvc_yaml(jobs: list[dict], configfile: str = "config/config.yaml") -> str:
    import yaml
    doc = {"stages": dvc_stages(jobs, configfile), "plots": dvc_plots(jobs)}
    return DVC_HEADER + yaml.safe_dump(doc, sort_keys=False, width=120, default_flow_style=False)


def write_or_check(output="dvc.yaml", configfile="config/config.yaml", check=False, workdir=".") -> int:
    """Write dvc.yaml (atomically), or with check=True return 1 and print a diff when it is stale."""
    text = render_dvc_yaml(snakemake_jobs(configfile=configfile, workdir=workdir), configfile)
    path = Path(workdir) / output
    if check:
        current = path.read_text(encoding="utf-8") if path.is_file() else ""
        if current != text:
            import difflib
            diff = "".join(difflib.unified_diff(current.splitlines(True), text.splitlines(True), str(path), "generated"))
            print(f"{path} is out of date with the Snakemake DAG; regenerate it with "
                  f"`python -m nanochat.workflow_tools dvc`:\n{diff}", file=sys.stderr)
            return 1
        print(f"{path} matches the Snakemake DAG")
        return 0
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


# -----------------------------------------------------------------------------
# CLI

def main(argv=None) -> int:
    parser = ArgumentParser(description="Workflow helpers (dvc.yaml generation, safe resume, done-markers)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare_resume", help="keep checkpoints only if inputs/settings are unchanged")
    p.add_argument("--checkpoint_dir", required=True)
    p.add_argument("--inputs", nargs="*", default=[])
    p.add_argument("--settings", default="")
    p = sub.add_parser("mark_checkpoint", help="write a done-marker for the last checkpoint of a directory")
    p.add_argument("--checkpoint_dir", required=True)
    p.add_argument("--output", required=True)
    p = sub.add_parser("dvc", help="generate dvc.yaml from the Snakemake DAG")
    p.add_argument("--output", default="dvc.yaml")
    p.add_argument("--configfile", default="config/config.yaml")
    p.add_bool("--check", default=False, help="exit 1 when the file differs from the generated one")
    args = parser.parse_args(argv)
    if args.command == "prepare_resume":
        prepare_resume(args.checkpoint_dir, args.inputs, args.settings)
    elif args.command == "mark_checkpoint":
        mark_checkpoint(args.checkpoint_dir, args.output)
    elif args.command == "dvc":
        return write_or_check(args.output, args.configfile, check=args.check)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
