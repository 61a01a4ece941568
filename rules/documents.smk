"""Documents: the bundled synthetic world, validation and chunking.

REQUIRED INPUTS: knowledge_bases.<kb>.documents (documents.jsonl), or nothing for results/synthetic/.
OUTPUTS: results/synthetic/*.jsonl, results/kb/<kb>/documents.jsonl (+ rejected.jsonl), results/kb/<kb>/chunks.parquet
A KB with `shards: N` > 1 is chunked as N jobs (results/kb/<kb>/shards/<i>-of-<N>/chunks.parquet, contiguous document
ranges) and gathered into the same chunks.parquet.
"""

reads_config("synthetic", "knowledge_bases")


rule synthetic_world:
    """Generate the seeded synthetic world (documents + single/two-hop queries) used by the default config."""
    input:
        code=code_of("workflow/scripts/synthetic_world.py"),
    output:
        documents="results/synthetic/documents.jsonl",
        train="results/synthetic/queries_train.jsonl",
        val="results/synthetic/queries_val.jsonl",
        test="results/synthetic/queries_test.jsonl",
        manifest="results/synthetic/manifest.json",
    params:
        outdir=subpath(output.manifest, parent=True),
        seed=lookup(within=config, dpath="synthetic/seed"),
        n_entities=lookup(within=config, dpath="synthetic/n_entities"),
        world=lookup(within=config, dpath="synthetic/world"),
    log:
        "logs/synthetic_world.log",
    benchmark:
        "benchmarks/synthetic_world.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
        gpu=0,
    conda:
        ENV_CPU
    script:
        "../workflow/scripts/synthetic_world.py"


rule validate_documents:
    """Check every document record; keep the valid ones and the rejected ones with their reason."""
    input:
        documents=kb_documents,
        code=code_of("workflow/scripts/validate_documents.py"),
    output:
        valid="results/kb/{kb}/documents.jsonl",
        rejected="results/kb/{kb}/rejected.jsonl",
    params:
        mode=kb_setting("validation"),
    log:
        "logs/validate_documents/{kb}.log",
    benchmark:
        "benchmarks/validate_documents/{kb}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
        gpu=0,
    conda:
        ENV_CPU
    script:
        "../workflow/scripts/validate_documents.py"


rule chunk_documents:
    """Split valid documents into overlapping token windows (chunks.parquet)."""
    input:
        documents="results/kb/{kb}/documents.jsonl",
        code=code_of("workflow/scripts/chunk_documents.py"),
    output:
        chunks="results/kb/{kb}/chunks.parquet",
    wildcard_constraints:
        kb=kbs_sharded(False),
    params:
        chunk_tokens=kb_setting("chunk_tokens"),
        overlap=kb_setting("chunk_overlap"),
        shard=[],
    log:
        "logs/chunk_documents/{kb}.log",
    benchmark:
        "benchmarks/chunk_documents/{kb}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
        gpu=0,
    conda:
        ENV_CPU
    script:
        "../workflow/scripts/chunk_documents.py"


rule chunk_shard:
    """Chunk one shard (a contiguous range) of a sharded KB's documents."""
    input:
        documents="results/kb/{kb}/documents.jsonl",
        code=code_of("workflow/scripts/chunk_documents.py"),
    output:
        chunks="results/kb/{kb}/shards/{scatteritem}/chunks.parquet",
    wildcard_constraints:
        kb=kbs_sharded(True),
    params:
        chunk_tokens=kb_setting("chunk_tokens"),
        overlap=kb_setting("chunk_overlap"),
        shard=lambda wildcards: ["--shard", wildcards.scatteritem],
    log:
        "logs/chunk_shard/{kb}.{scatteritem}.log",
    benchmark:
        "benchmarks/chunk_shard/{kb}.{scatteritem}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
        gpu=0,
    conda:
        ENV_CPU
    script:
        "../workflow/scripts/chunk_documents.py"


rule gather_chunks:
    """Join a sharded KB's chunk files in shard order: the chunks.parquet one job would write."""
    input:
        shards=kb_shard_files("results/kb/{kb}/shards/{scatteritem}/chunks.parquet"),
        code=code_of("nanochat.retrieval.shards"),
    output:
        chunks="results/kb/{kb}/chunks.parquet",
    wildcard_constraints:
        kb=kbs_sharded(True),
    log:
        "logs/gather_chunks/{kb}.log",
    benchmark:
        "benchmarks/gather_chunks/{kb}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
        gpu=0,
    conda:
        ENV_CPU
    shell:
        "python -m nanochat.retrieval.shards gather-chunks --inputs {input.shards:q} --output {output.chunks:q} > {log:q} 2>&1"
