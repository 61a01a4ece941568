"""Config validation, lookup helpers and wildcard constraints shared by every rule file.

The helpers are thin: path conventions and config arithmetic live in nanochat/pipeline/,
where tests can reach them without Snakemake.
"""
import sys
from pathlib import Path

from snakemake.utils import validate

# Jobs import nanochat/ and scripts/ from this checkout (no install needed; a SLURM job re-reads this file).
sys.path.insert(0, workflow.basedir)
from nanochat.pipeline import code_deps
from nanochat.pipeline import config as wf_config
from nanochat.pipeline import jobs as wf_jobs
from nanochat.pipeline import launch as wf_launch
from nanochat.pipeline import plan_cache
from nanochat.retrieval.registry import NEEDS_EMBEDDINGS, RETRIEVERS

wf_jobs.use_checkout(workflow.basedir)


# What planning derives from the source alone (the filled schema, each rule's code), kept until the source changes.
PLAN_CACHE = plan_cache.PlanCache(Path(".snakemake") / "plan_cache.json",
                                  plan_cache.source_fingerprint(workflow.basedir, [wf_config.SCHEMA]))
# the schema names registries (x-registry) for its lists of choices; validate against it with them filled in
validate(config, schema=wf_config.write_schema(Path(".snakemake") / "config.schema.json", cache=PLAN_CACHE))
wf_config.check_config_references(config)

RUNS = sorted(config["runs"])
KBS = sorted(config["knowledge_bases"])
# Snakemake's scatter-gather: kb_<kb> = the KB's shards, run_<run> = the run's precompute blocks (--set-scatter NAME=N).
# A KB or run with 1 keeps its one-job rules; more go through the shard rules and a gather.
workflow.scattergather(**wf_config.scatter_names(config))
# The tokenizer and base model read the KB text through this index type (cheap to build), so that
# changing a run's retriever settings never retrains them.
TEXT_KB_TYPE = wf_config.TEXT_KB_TYPE
ENV_CPU = "../envs/cpu.yaml"
ENV_GPU = "../envs/gpu.yaml"


def kb_cfg(wildcards):
    """The knowledge_bases entry named by {kb}."""
    return config["knowledge_bases"][wildcards.kb]


def run_cfg(wildcards):
    """The runs entry named by {run}."""
    return config["runs"][wildcards.run]


def code_of(*entries):
    """Source files a job runs, tracked as inputs (Snakemake and DVC are otherwise blind to library edits): the
    import closure of the rule's entry points, its workflow/scripts wrapper or the `-m` modules of its shell
    command (nanochat/pipeline/code_deps.py). A module that does not exist is an error."""
    return code_deps.code_of(workflow.basedir, *entries, cache=PLAN_CACHE)


STAGE_CONFIG = {}  # rule file stem -> the config sections its rules read, declared by reads_config()


def reads_config(*keys):
    """The config sections (or dotted keys) the rules of a file read, declared once at the top of each file under
    rules/. The DVC stage generated from the file lists them as `params:` (python -m nanochat.pipeline dvc);
    Snakemake itself tracks each job's own params."""
    stage = Path(workflow.included_stack[-1].get_path_or_uri(secret_free=True)).stem
    STAGE_CONFIG[stage] = list(keys)


def kb_setting(key):
    """Input/params function: one key of the {kb} entry."""

    def setting(wildcards):
        return kb_cfg(wildcards)[key]

    return setting


def run_setting(dpath):
    """Params function: one (slash-separated) key of the {run} entry, e.g. "train/max_steps"."""

    def setting(wildcards):
        return wf_config.get_path(run_cfg(wildcards), dpath)

    return setting


def model_setting(key):
    """Params function: one key of the models entry named by {size}."""

    def setting(wildcards):
        return config["models"][wildcards.size][key]

    return setting


def kb_documents(wildcards):
    """The documents.jsonl a knowledge base is built from."""
    return kb_cfg(wildcards)["documents"]


def kb_index_inputs(wildcards):
    """Chunks always; embeddings only for index types that need them (dense, hybrid)."""
    inputs = {"chunks": f"results/kb/{wildcards.kb}/chunks.parquet"}
    if wildcards.kb_type in NEEDS_EMBEDDINGS:
        inputs["embeddings"] = f"results/kb/{wildcards.kb}/embeddings.npy"
        inputs["embedder_info"] = f"results/kb/{wildcards.kb}/embeddings.json"
    return inputs


def embeddings_flag(wildcards, input):
    """`--embeddings FILE --embedder_info FILE` for dense/hybrid indices, nothing otherwise."""
    if "embeddings" not in input.keys():
        return ""
    return f"--embeddings {input.embeddings} --embedder_info {input.embedder_info}"


def text_kb(wildcards):
    """The KB manifest the tokenizer and base model read their text from."""
    return f"results/kb/{wildcards.kb}/{TEXT_KB_TYPE}/manifest.json"


def run_kb(wildcards):
    """Manifest of the KB index a run retrieves from."""
    run = run_cfg(wildcards)
    return f"results/kb/{run['knowledge_base']}/{run['retriever_type']}/manifest.json"


def run_query(split):
    """Input function: the run's query file for one split."""

    def query_file(wildcards):
        return run_cfg(wildcards)["queries"][split]

    return query_file


def run_tokenizer(wildcards):
    """Tokenizer a run tokenises with: its knowledge base's, or its imported checkpoint's."""
    run = run_cfg(wildcards)
    return wf_config.tokenizer_meta(config, run["knowledge_base"], run["model"])


def run_base_model(wildcards):
    """Done-marker of the model a run starts from (trained here, hybridized, or imported)."""
    run = run_cfg(wildcards)
    return wf_config.base_model_done(config, run["knowledge_base"], run["model"])


def models_matching(test):
    """Wildcard regex of the models entries for which test(entry) holds (never matches when there are none)."""
    names = wf_config.models_where(config, test)
    return "|".join(names) if names else "(?!)"


def checkpoint_setting(key, default=None):
    """Params function: one key of the checkpoint: block of the models entry named by {size}."""

    def setting(wildcards):
        return config["models"][wildcards.size]["checkpoint"].get(key, default)

    return setting


def imported_checkpoint_files(wildcards):
    """The files the import of {size} reads (model, meta of the chosen step; upstream's tokenizer.pkl)."""
    return wf_config.pretrained_inputs(config["models"][wildcards.size])


def imported_model(wildcards):
    """Done-marker of the imported checkpoint that {size} is hybridized from."""
    return f"{wf_config.imported_dir(wildcards.size)}/model.json"


def requires_mamba(wildcards):
    """`true` when {size} is fine-tuned as imported (no hybridize: block): RAG needs its Mamba layers."""
    return str(not wf_config.is_hybridized(config["models"][wildcards.size])).lower()


def hybridize_flags(wildcards):
    """scripts.hybridize flags of {size} on {kb} (also the fingerprint that decides --resume)."""
    return wf_config.hybridize_args(config, wildcards.kb, wildcards.size)


def run_start_model(wildcards):
    """Done-marker of the model a run fine-tunes: the base model, or the init_from rag run's model."""
    return wf_config.start_model_done(config, wildcards.run)


def base_model_tag(wildcards):
    """Checkpoint tag of the base model of {kb} and {size}."""
    return wf_config.base_model_tag(wildcards.kb, wildcards.size)


def base_checkpoint_dir(wildcards):
    """<base_dir>/base_checkpoints/<tag>/, where scripts.base_train saves (not a Snakemake output: see train.smk)."""
    return f"{config['base_dir']}/base_checkpoints/{base_model_tag(wildcards)}"


def run_checkpoint_done(wildcards):
    """done.json the fine-tuning library writes last into the run's checkpoint directory."""
    return wf_config.finetune_done_path(config, wildcards.run)


def run_kb_dir(wildcards):
    """KB directory (not its manifest) of a run, for CLIs that take the directory."""
    return str(Path(run_kb(wildcards)).parent)


def compared_rag_run(wildcards):
    """Inputs of the rag run a refrag run is compared with (compare_with): its model and its retrieval table."""
    other = run_cfg(wildcards).get("compare_with")
    if other is None:
        return {}
    return {"rag_model": wf_config.finetune_done_path(config, other), "rag_retrieval": f"results/runs/{other}/retrieval.parquet"}


def compare_flags(wildcards, input):
    """`--rag_model_tag RUN --rag_retrieval TABLE` when the refrag run names a rag run to compare with. The RAG
    answers are generated here rather than read from the rag run's evaluation (--rag_eval), so that the two
    single-threaded evaluations run side by side instead of one after the other."""
    other = run_cfg(wildcards).get("compare_with")
    if other is None:
        return ""
    return f"--rag_model_tag {other} --rag_retrieval {input.rag_retrieval}"


def eval_flags(wildcards):
    """Evaluation flags of the run's evaluate section (abstention threshold, adaptive hops)."""
    return wf_config.eval_args(run_cfg(wildcards))


def runs_in_mode(mode):
    """Wildcard regex matching the runs of one mode (never matches when there are none)."""
    names = [r for r in RUNS if config["runs"][r]["mode"] == mode]
    return "|".join(names) if names else "(?!)"


def dataset_mode_flags(wildcards):
    """nanochat.rag.dataset's mode flags: `--mode rag`, or multi_hop shards for refrag runs."""
    return wf_config.dataset_args(run_cfg(wildcards))


def hop_flags(wildcards):
    """Multi-hop precompute flags for refrag runs (the CLI's single-hop default otherwise)."""
    return wf_config.hop_args(run_cfg(wildcards))


def torchrun_launcher(wildcards):
    """The run's launcher: train.gpus processes per node (1 CPU process where no GPU is visible), train.nodes nodes
    (srun + torchrun rendezvous under SLURM); decided on the node that runs it (nanochat/pipeline/launch.py)."""
    run = run_cfg(wildcards)
    return wf_launch.torchrun_prefix(wf_config.train_gpus(run), wf_config.train_nodes(run), config["device"])


def model_launcher(wildcards):
    """A model job's launcher (hybridize: no run, so no train.gpus): one node, one process per visible GPU."""
    return wf_launch.torchrun_prefix(1, 1, config["device"])


def train_resource(name):
    """A fine-tune's resources from its run: gpu = train.gpus x train.nodes (what `--resources gpu=N` counts), nodes;
    a multi-node run is an MPI-style SLURM job (the plugin runs the command as is, which calls srun itself): one
    task per node (tasks) and no tasks-per-GPU."""

    def value(wildcards):
        run = run_cfg(wildcards)
        nodes = wf_config.train_nodes(run)
        return {"gpu": wf_config.gpu_resource(run), "nodes": nodes,
                "mpi": "srun" if nodes > 1 else None, "tasks": nodes if nodes > 1 else None,
                "tasks_per_gpu": 0 if nodes > 1 else None}[name]

    return value


# -----------------------------------------------------------------------------
# Sharded KBs and precompute blocks


def shards_of(scatter_name):
    """Shard count of a scatter name, --set-scatter overrides included."""
    return len(getattr(scatter, scatter_name)("{scatteritem}"))


def kbs_sharded(sharded):
    """Wildcard regex of the KBs built in shards (sharded=True) or in one job each."""
    names = [k for k in KBS if (shards_of(f"kb_{k}") > 1) == sharded]
    return "|".join(names) if names else "(?!)"


def runs_sharded(sharded):
    """Wildcard regex of the runs whose precompute runs in blocks (sharded=True) or in one job."""
    names = [r for r in RUNS if (shards_of(f"run_{r}") > 1) == sharded]
    return "|".join(names) if names else "(?!)"


def kb_shard_files(pattern):
    """Input function: the {kb}'s shard files, in shard order (gather.kb_<kb>)."""

    def files(wildcards):
        return getattr(gather, f"kb_{wildcards.kb}")(pattern, kb=wildcards.kb)

    return files


def run_block_files(wildcards):
    """The {run}'s precompute blocks, in order (gather.run_<run>)."""
    return getattr(gather, f"run_{wildcards.run}")("results/runs/{run}/retrieval_blocks/{scatteritem}.parquet",
                                                  run=wildcards.run)


def bm25_token_inputs(wildcards):
    """Per-shard BM25 tokens of a sharded KB whose index type needs BM25 (bm25, hybrid)."""
    if wildcards.kb_type not in ("bm25", "hybrid") or shards_of(f"kb_{wildcards.kb}") == 1:
        return []
    return kb_shard_files("results/kb/{kb}/shards/{scatteritem}/bm25_tokens.npz")(wildcards)


def index_flags(wildcards, input):
    """Build flags besides chunks: embeddings, the KB's dense settings, shard BM25 tokens, the embedding cache."""
    flags = [embeddings_flag(wildcards, input)]
    if wildcards.kb_type in NEEDS_EMBEDDINGS:
        flags.append(wf_config.dense_build_flags(kb_cfg(wildcards)))
    if input.get("bm25_tokens"):
        flags.append(f"--bm25_tokens {' '.join(input.bm25_tokens)}")
    return " ".join(f for f in flags if f)


def run_search_flags(wildcards):
    """Precompute's dense search overrides from the run's `search:`."""
    return wf_config.search_flags(run_cfg(wildcards))


def finetune_flags(wildcards):
    """Fine-tuning CLI flags from the run's config (also the fingerprint that decides --resume)."""
    return wf_config.finetune_args(config, wildcards.run)


def kb_embedder_inputs(wildcards):
    """The fine-tuned encoder directory, for a KB with finetune_embedder (its chunks are embedded by it)."""
    if wf_config.kb_finetuned(config, wildcards.kb):
        return {"embedder": wf_config.embedder_dir(wildcards.kb)}
    return {}


def kb_embedding_model(wildcards):
    """Params function: the model that embeds the KB's chunks (fine-tuned directory or embedding_model)."""
    return wf_config.kb_embedding_model(config, wildcards.kb)


def fusion_inputs(wildcards):
    """Val questions of the hybrid index of a KB whose finetune_embedder tunes the fusion weight."""
    ft = kb_cfg(wildcards).get("finetune_embedder")
    if wildcards.kb_type == "hybrid" and ft and ft.get("tune_fusion", True):
        return {"tune_on": wf_config.tuning_queries(config, wildcards.kb, "val")}
    return {}


def fusion_flag(wildcards, input):
    """`--tune_fusion VAL` when the hybrid weight is tuned on the KB's val questions."""
    return f"--tune_fusion {input.tune_on}" if "tune_on" in input.keys() else ""


def finetune_setting(key):
    """Params function: one key of the {kb} entry's finetune_embedder block."""

    def setting(wildcards):
        return kb_cfg(wildcards)["finetune_embedder"][key]

    return setting


def tuning_query(split):
    """Input function: the train or val questions the {kb}'s retrievers are trained on."""

    def query_file(wildcards):
        return wf_config.tuning_queries(config, wildcards.kb, split)

    return query_file


def tuning_flags(block):
    """Params function: training flags of the {kb} entry's finetune_embedder or reranker block."""
    keys = wf_config.FINETUNE_FLAGS if block == "finetune_embedder" else wf_config.RERANKER_FLAGS

    def flags(wildcards):
        return wf_config.training_args(kb_cfg(wildcards)[block], keys)

    return flags


def run_reranker(wildcards):
    """The KB's cross-encoder directory, for a run with rerank."""
    run = run_cfg(wildcards)
    return {"reranker": wf_config.reranker_dir(run["knowledge_base"])} if run.get("rerank") else {}


def rerank_flags(wildcards, input):
    """`--rerank_model DIR --rerank_depth N` for a run with rerank, nothing otherwise."""
    if "reranker" not in input.keys():
        return ""
    return f"--rerank_model {input.reranker} {wf_config.rerank_args(config, wildcards.run)}"


def final_outputs():
    """Targets of the default target: every run's metrics plus the report."""
    return expand("results/runs/{run}/eval/metrics.json", run=RUNS) + [
        "results/report/metrics.csv",
        "results/report/metrics.png",
    ]
