"""The workflow config beyond its schema: cross-references, path conventions and the flags each rule passes.

The schema (workflow/schemas/config.schema.yaml) checks types and defaults; this checks that names point
somewhere, and turns a run's config into the CLI flags of the library's entry points.
"""
from __future__ import annotations

import shlex

TEXT_KB_TYPE = "simple"  # the index the tokenizer and base model read text from (cheapest to build)


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

def dataset_args(run: dict) -> str:
    """nanochat.rag.dataset flags of a run's mode: multi_hop shards (documents per hop) for refrag."""
    if run.get("mode", "rag") == "refrag":
        return f"--mode refrag --max_hops {run['max_hops']} --hop_strategy {run.get('hop_strategy', 'entities')}"
    return "--mode rag"

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
            "--max_doc_length", t["max_doc_length"], "--p_gold", t["p_gold"], "--seed", t["seed"],
            # periodic checkpoints, so that a killed, timed-out or preempted job resumes mid-run
            "--save_every", t["save_every"], "--save_every_minutes", t["save_every_minutes"],
            "--keep_last", t["keep_last"]]
    if run["mode"] == "refrag":
        args += ["--max_hops", run["max_hops"], "--top_k_per_hop", run["top_k"],
                 "--hop_strategy", run.get("hop_strategy", "entities"),
                 "--max_new_tokens", run.get("evaluate", {}).get("max_new_tokens", 32),
                 "--use_rewards", str(run["use_rewards"]).lower(), "--rl_steps", t["rl_steps"],
                 "--num_samples", t["num_samples"], "--rl_lr_frac", t.get("rl_lr_frac", 0.1)]
    return " ".join(shlex.quote(str(a)) for a in args)


# -----------------------------------------------------------------------------
# Scale: shards, dense index settings, GPUs per run

def scatter_names(config: dict) -> dict:
    """Snakemake scattergather names and counts: kb_<kb> = knowledge_bases.<kb>.shards, run_<run> =
    runs.<run>.precompute_shards (overridable with --set-scatter NAME=N)."""
    names = {f"kb_{k}": int(v.get("shards", 1)) for k, v in config["knowledge_bases"].items()}
    names.update({f"run_{r}": int(v.get("precompute_shards", 1)) for r, v in config["runs"].items()})
    return names


def flags_of(settings: dict) -> str:
    """--key value for every set (non-null) entry, in key order."""
    return " ".join(f"--{k} {shlex.quote(str(v))}" for k, v in sorted(settings.items()) if v is not None)


def dense_build_flags(kb: dict) -> str:
    """python -m nanochat.retrieval flags of a KB's `dense:` settings (null = the library's default)."""
    return flags_of(kb.get("dense") or {})


def search_flags(run: dict) -> str:
    """Precompute's dense search overrides from a run's `search:` (dense and hybrid runs only)."""
    if run.get("retriever_type") not in ("dense", "hybrid"):
        return ""
    return flags_of(run.get("search") or {})


def train_gpus(run: dict) -> int:
    """GPUs per node of a run's fine-tune (torchrun --nproc_per_node)."""
    return int((run.get("train") or {}).get("gpus", 1))


def train_nodes(run: dict) -> int:
    """Nodes of a run's fine-tune (torchrun --nnodes; > 1 only under SLURM)."""
    return int((run.get("train") or {}).get("nodes", 1))


def gpu_resource(run: dict) -> int:
    """The fine-tune rule's `gpu` resource: every GPU the run holds (per node x nodes), so that
    `snakemake --resources gpu=8` admits one 8-GPU run, or two 4-GPU runs, at a time."""
    return train_gpus(run) * train_nodes(run)
