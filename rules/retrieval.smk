"""Retrieval for every query of a run, computed once (training never retrieves), and the leakage check.

REQUIRED INPUTS: the run's KB index manifest and its train/val/test query files
OUTPUTS: results/runs/<run>/retrieval.parquet (+ .meta.json sidecar with kb_id and recall@k), results/runs/<run>/leakage.json
"""

reads_config("runs", "leakage")


rule precompute_retrieval:
    """Retrieve k_max chunks per query (per hop for refrag runs) for all three splits."""
    input:
        kb=run_kb,
        train=run_query("train"),
        val=run_query("val"),
        test=run_query("test"),
        code=code_of("workflow/scripts/precompute_retrieval.py"),
    output:
        retrieval="results/runs/{run}/retrieval.parquet",
        meta="results/runs/{run}/retrieval.parquet.meta.json",
    params:
        kb_dir=subpath(input.kb, parent=True),
        retriever_type=run_setting("retriever_type"),
        k_max=run_setting("k_max"),
        hops=hop_flags,
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
