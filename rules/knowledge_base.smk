"""Knowledge base: chunk embeddings and one index directory per retriever type.

REQUIRED INPUTS: results/kb/<kb>/chunks.parquet
OUTPUTS: results/kb/<kb>/embeddings.npy (by the fine-tuned encoder of rules/retriever_tuning.smk when set), results/kb/<kb>/<type>/manifest.json (the KB directory; manifest written last,
its kb_id is the content hash every downstream metric carries)

Embeddings go through the embedding cache (config embedding_cache): only chunks whose text it lacks are encoded.
A KB with `shards: N` > 1 embeds and BM25-tokenizes each shard as its own job (a GPU each where the profile gives
one); gather_embeddings joins the vectors and build_index the BM25 tokens, into the files one job would make.
"""

reads_config("knowledge_bases", "embedding_cache")


rule embed_chunks:
    """Encode every chunk with the KB's sentence-transformers model, fine-tuned when set (L2-normalised float32)."""
    input:
        unpack(kb_embedder_inputs),
        chunks="results/kb/{kb}/chunks.parquet",
        code=code_of("workflow/scripts/embed_chunks.py"),
    output:
        embeddings="results/kb/{kb}/embeddings.npy",
        info="results/kb/{kb}/embeddings.json",
    wildcard_constraints:
        kb=kbs_sharded(False),
    params:
        model=kb_embedding_model,
        batch_size=kb_setting("embedding_batch_size"),
        cache=config["embedding_cache"],
    log:
        "logs/embed_chunks/{kb}.log",
    benchmark:
        "benchmarks/embed_chunks/{kb}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=0,
    conda:
        ENV_CPU
    script:
        "../workflow/scripts/embed_chunks.py"


rule embed_shard:
    """Encode one shard of a sharded KB's chunks (through the embedding cache)."""
    input:
        unpack(kb_embedder_inputs),
        chunks="results/kb/{kb}/shards/{scatteritem}/chunks.parquet",
        code=code_of("workflow/scripts/embed_chunks.py"),
    output:
        embeddings="results/kb/{kb}/shards/{scatteritem}/embeddings.npy",
        info="results/kb/{kb}/shards/{scatteritem}/embeddings.json",
    wildcard_constraints:
        kb=kbs_sharded(True),
    params:
        model=kb_embedding_model,
        batch_size=kb_setting("embedding_batch_size"),
        cache=config["embedding_cache"],
    log:
        "logs/embed_shard/{kb}.{scatteritem}.log",
    benchmark:
        "benchmarks/embed_shard/{kb}.{scatteritem}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=0,
    conda:
        ENV_CPU
    script:
        "../workflow/scripts/embed_chunks.py"


rule gather_embeddings:
    """Join a sharded KB's embedding shards in order (+ the sidecar one embed job would write)."""
    input:
        shards=kb_shard_files("results/kb/{kb}/shards/{scatteritem}/embeddings.npy"),
        chunks="results/kb/{kb}/chunks.parquet",
        code=code_of("nanochat.retrieval.shards"),
    output:
        embeddings="results/kb/{kb}/embeddings.npy",
        info="results/kb/{kb}/embeddings.json",
    wildcard_constraints:
        kb=kbs_sharded(True),
    log:
        "logs/gather_embeddings/{kb}.log",
    benchmark:
        "benchmarks/gather_embeddings/{kb}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
        gpu=0,
    conda:
        ENV_CPU
    shell:
        "python -m nanochat.retrieval.shards gather-embeddings --inputs {input.shards:q} --chunks {input.chunks:q}"
        " --output {output.embeddings:q} > {log:q} 2>&1"


rule bm25_tokens:
    """Tokenize one shard's passages for BM25 (regex, stopwords, stemming); build_index gathers them."""
    input:
        chunks="results/kb/{kb}/shards/{scatteritem}/chunks.parquet",
        code=code_of("nanochat.retrieval.shards"),
    output:
        tokens="results/kb/{kb}/shards/{scatteritem}/bm25_tokens.npz",
    wildcard_constraints:
        kb=kbs_sharded(True),
    log:
        "logs/bm25_tokens/{kb}.{scatteritem}.log",
    benchmark:
        "benchmarks/bm25_tokens/{kb}.{scatteritem}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
        gpu=0,
    conda:
        ENV_CPU
    shell:
        "python -m nanochat.retrieval.shards bm25-tokens --chunks {input.chunks:q} --output {output.tokens:q} > {log:q} 2>&1"


rule build_index:
    """Build the {kb_type} index over the chunks with the guide's CLI; manifest.json marks a complete KB."""
    input:
        unpack(kb_index_inputs),
        unpack(fusion_inputs),
        bm25_tokens=bm25_token_inputs,
        code=code_of("nanochat.retrieval"),
    output:
        manifest="results/kb/{kb}/{kb_type}/manifest.json",
    params:
        outdir=subpath(output.manifest, parent=True),
        flags=index_flags,
        model=kb_setting("embedding_model"),
        tune=fusion_flag,
    log:
        "logs/build_index/{kb}.{kb_type}.log",
    benchmark:
        "benchmarks/build_index/{kb}.{kb_type}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=0,
    conda:
        ENV_CPU
    shell:
        "python -m nanochat.retrieval --chunks {input.chunks:q} {params.flags} --output {params.outdir:q}"
        " --type {wildcards.kb_type} --model {params.model:q} {params.tune} > {log:q} 2>&1"
