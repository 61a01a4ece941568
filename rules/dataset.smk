"""Training conversations: retrieval messages + question + answer, tokenised with a loss mask (RAFT mix): single-hop
for rag runs, the multi_hop message (one block per hop) for refrag runs, whose warm-up trains on them directly.

REQUIRED INPUTS: results/runs/<run>/retrieval.parquet, leakage.json (must pass), the KB's tokenizer
OUTPUTS: results/runs/<run>/dataset/manifest.json (written last, after the {train,val}_XXXXX.npz shards)
"""

reads_config("runs")


rule build_dataset:
    """Tokenise the run's training and validation conversations into shards."""
    input:
        kb=run_kb,
        retrieval="results/runs/{run}/retrieval.parquet",
        leakage="results/runs/{run}/leakage.json",
        train=run_query("train"),
        val=run_query("val"),
        tokenizer=run_tokenizer,
        code=code_of("workflow/scripts/build_dataset.py"),
    output:
        manifest="results/runs/{run}/dataset/manifest.json",
    params:
        kb_dir=subpath(input.kb, parent=True),
        tokenizer_dir=subpath(input.tokenizer, parent=True),
        outdir=subpath(output.manifest, parent=True),
        top_k=run_setting("top_k"),
        p_gold=run_setting("train/p_gold"),
        max_seq_len=run_setting("train/max_seq_len"),
        max_doc_length=run_setting("train/max_doc_length"),
        seed=run_setting("train/seed"),
        mode_flags=dataset_mode_flags,
    log:
        "logs/build_dataset/{run}.log",
    benchmark:
        "benchmarks/build_dataset/{run}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=0,
    conda:
        ENV_CPU
    script:
        "../workflow/scripts/build_dataset.py"
