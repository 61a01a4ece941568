"""The workflow config beyond its schema: cross-references, path conventions and the flags each rule passes.

The schema (workflow/schemas/config.schema.yaml) checks types and defaults; this checks that names point
somewhere, and turns a run's config into the CLI flags of the library's entry points.
"""
from __future__ import annotations

import importlib
import json
import shlex
from pathlib import Path

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
REGISTRY_KEY = "x-registry"  # a schema node whose allowed values are a registry's names (module.NAME)
TEXT_KB_TYPE = "simple"  # the index the tokenizer and base model read text from (cheapest to build)


def get_path(d: dict, dpath: str):
    """d["a"]["b"] for dpath "a/b"."""
    for key in dpath.split("/"):
        d = d[key]
    return d

def check_config_references(config: dict) -> None:
    """Every run names an existing knowledge base and model, k_max >= top_k, a model that names an existing
    checkpoint finds it, and retrievers are tuned on train/val questions only (never a run's test file)."""
    problems = [p for name, model in config["models"].items() for p in check_pretrained(name, model)]
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
        kb = config["knowledge_bases"].get(run["knowledge_base"], {})
        if run.get("rerank") and not kb.get("reranker"):
            problems.append(f"runs.{name}.rerank: knowledge base '{run['knowledge_base']}' has no reranker "
                            f"(set knowledge_bases.{run['knowledge_base']}.reranker)")
    test_files = {str(r["queries"]["test"]): n for n, r in config["runs"].items() if (r.get("queries") or {}).get("test")}
    for name, kb in config["knowledge_bases"].items():
        tuning = (kb.get("finetune_embedder") or {}).get("queries")
        for split, path in (tuning.items() if isinstance(tuning, dict) else ()):
            if str(path) in test_files:  # retrievers are trained and selected on train/val only
                problems.append(f"knowledge_bases.{name}.finetune_embedder.queries.{split}: '{path}' is the test file of "
                                f"runs.{test_files[str(path)]}; the retrievers would be tuned on the questions they are "
                                "scored on (use the runs' train and val files)")
        if kb.get("reranker") and not kb.get("finetune_embedder"):
            problems.append(f"knowledge_bases.{name}.reranker: it trains on the questions of finetune_embedder, "
                            "which is not set (finetune_embedder: {queries: ..., epochs: 0} keeps the stock encoder)")
    if problems:
        raise ValueError("invalid workflow config:\n  " + "\n  ".join(problems))

# -----------------------------------------------------------------------------
# Models: trained from scratch per (KB, size), or an existing nanochat checkpoint (`checkpoint:`), imported once and
# optionally hybridized per KB (`hybridize:`)

def is_pretrained(model: dict) -> bool:
    """A models entry that names an existing checkpoint instead of sizes to train from scratch."""
    return "checkpoint" in model

def is_hybridized(model: dict) -> bool:
    return is_pretrained(model) and model.get("hybridize") is not None

def models_where(config: dict, test) -> list[str]:
    """Names of the models entries for which test(entry) holds (wildcard constraints of the model rules)."""
    return sorted(name for name, m in config["models"].items() if test(m))

def pretrained_checkpoint_dir(config_model: dict) -> Path:
    """<checkpoint.base_dir>/<family>_checkpoints/<model_tag>/ of a pretrained entry."""
    from nanochat.checkpoint_manager import SOURCES
    c = config_model["checkpoint"]
    return Path(c["base_dir"]) / f"{SOURCES[c.get('source', 'base')]}_checkpoints" / c["model_tag"]

def check_pretrained(name: str, model: dict) -> list[str]:
    """Problems with a pretrained entry that show before anything runs: its checkpoint (step) is not there."""
    if not is_pretrained(model):
        return []
    d = pretrained_checkpoint_dir(model)
    step = model["checkpoint"].get("step")
    if not d.is_dir():
        return [f"models.{name}.checkpoint: {d} does not exist (base_dir/<family>_checkpoints/model_tag)"]
    metas = sorted(d.glob("meta_*.json"))
    if step is None and not metas:
        return [f"models.{name}.checkpoint: no meta_<step>.json in {d}"]
    if step is not None and not (d / f"meta_{step:06d}.json").is_file():
        return [f"models.{name}.checkpoint.step: {d}/meta_{step:06d}.json does not exist "
                f"(steps there: {', '.join(m.stem.split('_')[-1] for m in metas) or 'none'})"]
    return []

def pretrained_inputs(config_model: dict) -> list[str]:
    """The files an import reads (so that Snakemake redoes it when they change): the chosen step's model and meta,
    and upstream's tokenizer.pkl when the base dir has one."""
    from nanochat.checkpoint_manager import find_last_step
    d = pretrained_checkpoint_dir(config_model)
    step = config_model["checkpoint"].get("step")
    step = find_last_step(d) if step is None else step
    files = [d / f"model_{step:06d}.pt", d / f"meta_{step:06d}.json"]
    pkl = Path(config_model["checkpoint"]["base_dir"]) / "tokenizer" / "tokenizer.pkl"
    return [str(f) for f in files + ([pkl] if pkl.is_file() else [])]

def imported_dir(model: str) -> str:
    """results/imported/<model>/: the import's done-marker (model.json) and the checkpoint's tokenizer."""
    return f"results/imported/{model}"

def base_model_tag(kb: str, size: str) -> str:
    """Checkpoint tag of the base model for one KB and size, trained or hybridized (names cannot contain dots,
    so this is unique)."""
    return f"{kb}.{size}"

def start_tag(config: dict, kb: str, model: str) -> str:
    """Tag under <base_dir>/base_checkpoints/ of the model runs of (kb, model) fine-tune: the per-KB base model
    (trained or hybridized), or an imported checkpoint as it is (one per model, whatever the KB)."""
    m = config["models"][model]
    return model if is_pretrained(m) and not is_hybridized(m) else base_model_tag(kb, model)

def base_model_done(config: dict, kb: str, model: str) -> str:
    """Done-marker of the model runs of (kb, model) fine-tune."""
    m = config["models"][model]
    if is_pretrained(m) and not is_hybridized(m):
        return f"{imported_dir(model)}/model.json"
    return f"results/models/{kb}/{model}/base_model.json"

def tokenizer_meta(config: dict, kb: str, model: str) -> str:
    """The tokenizer runs of (kb, model) tokenise with: the KB's own for a model trained here, the checkpoint's
    for an imported one (its ids are what the model learnt)."""
    if is_pretrained(config["models"][model]):
        return f"{imported_dir(model)}/tokenizer/tokenizer_meta.json"
    return f"results/models/{kb}/tokenizer/tokenizer_meta.json"

def hybridize_args(config: dict, kb: str, model: str) -> str:
    """scripts.hybridize flags of a hybridized model on one KB (besides KB, base dir, device and --resume)."""
    h = config["models"][model]["hybridize"]
    args = ["--source", "base", "--model_tag", model, "--output_tag", base_model_tag(kb, model),
            "--block_pattern", h["block_pattern"], "--steps", h["steps"], "--lr", h["lr"],
            "--warmup_steps", h["warmup_steps"], "--device_batch_size", h["device_batch_size"],
            "--max_seq_len", h["max_seq_len"], "--init", h["init"], "--train", h["train"],
            "--hidden_weight", h["hidden_weight"], "--seed", h["seed"]]
    return " ".join(shlex.quote(str(a)) for a in args)

def start_model_done(config: dict, run: str) -> str:
    """Done-marker of the model a run starts from: the init_from rag run's, else the base model's."""
    r = config["runs"][run]
    if r.get("init_from"):
        return finetune_done_path(config, r["init_from"])
    return base_model_done(config, r["knowledge_base"], r["model"])

def finetune_done_path(config: dict, run: str) -> str:
    """done.json written last by scripts.{rag,refrag}_finetune into the run's checkpoint directory."""
    mode = config["runs"][run]["mode"]
    return f"{config['base_dir']}/{mode}_checkpoints/{run}/done.json"

def dataset_args(run: dict) -> str:
    """nanochat.rag.dataset flags of a run's mode (multi_hop shards, documents per hop, for refrag) and of its
    abstention and citation recipe (train.negatives, train.cite, train.p_first_hop, train.p_gold_multihop)."""
    t = run.get("train", {})
    recipe = f"--negatives {t.get('negatives', 'no_gold')}"
    if run.get("mode", "rag") == "refrag":
        return (f"--mode refrag --max_hops {run['max_hops']} --hop_strategy {run.get('hop_strategy', 'entities')} "
                f"{recipe} --p_first_hop {t.get('p_first_hop', 0.0)}")
    multihop = f" --p_gold_multihop {t['p_gold_multihop']}" if t.get("p_gold_multihop") is not None else ""
    return f"--mode rag {recipe} --cite {t.get('cite', 'after')}{multihop}"

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
        ["--source", "base", "--model_tag", start_tag(config, run["knowledge_base"], run["model"])]
    args = [*source,
            "--output_tag", run_name, "--base_dir", config["base_dir"], "--device", config["device"],
            "--retriever_type", run["retriever_type"], "--top_k", run["top_k"],
            "--num_epochs", t["num_epochs"], "--max_steps", t["max_steps"], "--min_steps", t.get("min_steps", 0),
            "--warmup_frac", t.get("warmup_frac", 0.0),
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
# The schema's lists of choices come from the registries

def registry_names(ref: str) -> list[str]:
    """The names a registry offers: `module.NAME` of a dict/tuple, or of a function returning them."""
    module, _, name = ref.rpartition(".")
    registry = getattr(importlib.import_module(module), name)
    return list(registry() if callable(registry) else registry)


def schema_with_registries(schema_path=SCHEMA) -> dict:
    """The config schema with `enum` filled in from each `x-registry` node's registry.

    The schema file names the registry instead of copying its names, so adding a retriever or a hop
    strategy is its implementation and its registration only; validation still rejects unknown names.
    """
    import yaml
    schema = yaml.safe_load(Path(schema_path).read_text(encoding="utf-8"))

    def fill(node):
        if isinstance(node, dict):
            if REGISTRY_KEY in node:
                node["enum"] = registry_names(node[REGISTRY_KEY])
            for value in node.values():
                fill(value)
        elif isinstance(node, list):
            for value in node:
                fill(value)

    fill(schema)
    return schema


def write_schema(dest, schema_path=SCHEMA, cache=None) -> str:
    """schema_with_registries as a JSON file (what snakemake.utils.validate reads); returns its absolute path.

    cache: a plan_cache.PlanCache, so that planning imports the registries' modules (and torch) only after an
    edit of the source."""
    import hashlib

    from nanochat.common import atomic_write_text
    dest = Path(dest).resolve()
    key = "schema:" + hashlib.sha256(Path(schema_path).read_bytes()).hexdigest()
    schema = (cache.get(key, lambda: schema_with_registries(schema_path)) if cache is not None
              else schema_with_registries(schema_path))
    atomic_write_text(dest, json.dumps(schema, indent=1))
    return str(dest)


# -----------------------------------------------------------------------------
# Retrievers trained on the KB's questions (knowledge_bases.<kb>.finetune_embedder / reranker, runs.<run>.rerank)

FINETUNE_FLAGS = ("epochs", "batch_size", "lr", "hard_negatives", "train_seq_length")
RERANKER_FLAGS = ("epochs", "batch_size", "lr", "hard_negatives", "max_length")


def kb_finetuned(config: dict, kb: str) -> bool:
    return bool(config["knowledge_bases"][kb].get("finetune_embedder"))


def embedder_dir(kb: str) -> str:
    """The fine-tuned sentence-transformers directory of a KB (an output of rule finetune_embedder)."""
    return f"results/kb/{kb}/embedder"


def reranker_dir(kb: str) -> str:
    return f"results/kb/{kb}/reranker"


def kb_embedding_model(config: dict, kb: str) -> str:
    """What embeds the KB's chunks: its fine-tuned encoder when finetune_embedder is set, else embedding_model."""
    return embedder_dir(kb) if kb_finetuned(config, kb) else config["knowledge_bases"][kb].get("embedding_model", "all-MiniLM-L6-v2")


def tuning_queries(config: dict, kb: str, split: str) -> str:
    """The train or val question file the KB's retrievers are trained and selected on."""
    q = config["knowledge_bases"][kb]["finetune_embedder"]["queries"]
    return f"results/kb/{kb}/questions/queries_{split}.jsonl" if q == "generate" else q[split]


def training_args(block: dict, keys) -> str:
    """`--epochs 1 --batch_size 32 ...` of a finetune_embedder or reranker block (schema defaults filled in)."""
    return " ".join(f"--{k} {shlex.quote(str(block[k]))}" for k in keys if k in block)


def rerank_args(config: dict, run: str) -> str:
    """Precompute flags of a run's rerank setting (empty when off); the model path is the rule's input."""
    r = config["runs"][run].get("rerank")
    return f"--rerank_depth {int(r.get('depth', 20))}" if r else ""


def eval_args(run: dict) -> str:
    """Evaluation flags from a run's evaluate section: the optional abstention threshold (rag runs; `auto`
    calibrates on the run's validation queries, which the rule passes as --queries_val) and adaptive hopping
    (refrag runs)."""
    e = run.get("evaluate", {})
    args = []
    if run.get("mode", "rag") == "refrag":
        args += ["--adaptive_hops", str(bool(e.get("adaptive_hops", False))).lower()]
    elif e.get("abstain_threshold") is not None:
        args += ["--abstain_threshold", e["abstain_threshold"]]
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
