"""Retrieval for every query of a run, computed once (training never retrieves), and the leakage check.

REQUIRED INPUTS: the run's KB index manifest and its train/val/test query files
OUTPUTS: results/runs/<run>/retrieval.parquet (+ .meta.json sidecar with kb_id and recall@k), results/runs/<run>/leakage.json
A run with `precompute_shards: N` > 1 retrieves N contiguous query blocks as N jobs (results/runs/<run>/retrieval_blocks/)
and gather_retrieval joins them into the same table. Dense query vectors go through the embedding cache.
"""

reads_config("runs", "leakage", "embedding_cache")


rule precompute_retrieval:
    """Retrieve k_max chunks per query (per hop for refrag runs) for all three splits; reranked when the run asks."""
    input:
        unpack(run_reranker),
        kb=run_kb,
        train=run_query("train"),
        val=run_query("val"),
        test=run_query("test"),
        code=code_of("workflow/scripts/precompute_retrieval.py"),
    output:
        retrieval="results/runs/{run}/retrieval.parquet",
        meta="results/runs/{run}/retrieval.parquet.meta.json",
    wildcard_constraints:
        run=runs_sharded(False),
    params:
        kb_dir=subpath(input.kb, parent=True),
        retriever_type=run_setting("retriever_type"),
        k_max=run_setting("k_max"),
        hops=hop_flags,
        rerank=rerank_flags,
        extra=lambda wildcards: f"--embedding_cache {config['embedding_cache']} {run_search_flags(wildcards)}",
    log:
        "logs/precompute_retrieval/{run}.log",
    benchmark:
        "benchmarks/precompute_retrieval/{run}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=0,
    conda:
        ENV_CPU
    script:
        "../workflow/scripts/precompute_retrieval.py"


rule precompute_block:
    """Retrieve one contiguous block of each split's queries (a run with precompute_shards > 1)."""
    input:
        unpack(run_reranker),
        kb=run_kb,
        train=run_query("train"),
        val=run_query("val"),
        test=run_query("test"),
        code=code_of("workflow/scripts/precompute_retrieval.py"),
    output:
        retrieval="results/runs/{run}/retrieval_blocks/{scatteritem}.parquet",
        meta="results/runs/{run}/retrieval_blocks/{scatteritem}.parquet.meta.json",
    wildcard_constraints:
        run=runs_sharded(True),
    params:
        kb_dir=subpath(input.kb, parent=True),
        retriever_type=run_setting("retriever_type"),
        k_max=run_setting("k_max"),
        hops=hop_flags,
        rerank=rerank_flags,
        extra=lambda wildcards: (f"--block {wildcards.scatteritem} --embedding_cache {config['embedding_cache']} "
                                 f"{run_search_flags(wildcards)}"),
    log:
        "logs/precompute_block/{run}.{scatteritem}.log",
    benchmark:
        "benchmarks/precompute_block/{run}.{scatteritem}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=0,
    conda:
        ENV_CPU
    script:
        "../workflow/scripts/precompute_retrieval.py"


rule gather_retrieval:
    """Join a run's query blocks (in order) into retrieval.parquet + meta, recall@k over all queries."""
    input:
        blocks=run_block_files,
        train=run_query("train"),
        val=run_query("val"),
        test=run_query("test"),
        code=code_of("nanochat.retrieval.precompute"),
    output:
        retrieval="results/runs/{run}/retrieval.parquet",
        meta="results/runs/{run}/retrieval.parquet.meta.json",
    wildcard_constraints:
        run=runs_sharded(True),
    log:
        "logs/gather_retrieval/{run}.log",
    benchmark:
        "benchmarks/gather_retrieval/{run}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
        gpu=0,
    conda:
        ENV_CPU
    shell:
        "python -m nanochat.retrieval.precompute --queries train={input.train:q}"
        " val={input.val:q} test={input.test:q} --gather {input.blocks:q} --output {output.retrieval:q} > {log:q} 2>&1"


rule check_leakage:
    """Fail the run when held-out questions also appear in training (rate above leakage.max_leak_rate)."""
    input:
        train=run_query("train"),
        val=run_query("val"),
        test=run_query("test"),
        code=code_of("workflow/scripts/check_leakage.py"),
    output:
        report="results/runs/{run}/leakage.json",
    params:
        max_leak_rate=lookup(within=config, dpath="leakage/max_leak_rate"),
    log:
        "logs/check_leakage/{run}.log",
    benchmark:
        "benchmarks/check_leakage/{run}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
        gpu=0,
    conda:
        ENV_CPU
    script:
        "../workflow/scripts/check_leakage.py"
