"""Knowledge base: chunk embeddings and one index directory per retriever type.

REQUIRED INPUTS: results/kb/<kb>/chunks.parquet
OUTPUTS: results/kb/<kb>/embeddings.npy, results/kb/<kb>/<type>/manifest.json (the KB directory; manifest written last,
its kb_id is the content hash every downstream metric carries)
"""

reads_config("knowledge_bases")


rule embed_chunks:
    """Encode every chunk with the sentence-transformers model (L2-normalised float32)."""
    input:
        chunks="results/kb/{kb}/chunks.parquet",
        code=code_of("workflow/scripts/embed_chunks.py"),
    output:
        embeddings="results/kb/{kb}/embeddings.npy",
        info="results/kb/{kb}/embeddings.json",
    params:
        model=kb_setting("embedding_model"),
        batch_size=kb_setting("embedding_batch_size"),
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


rule build_index:
    """Build the {kb_type} index over the chunks with the guide's CLI; manifest.json marks a complete KB."""
    input:
        unpack(kb_index_inputs),
        code=code_of("nanochat.retrieval"),
    output:
        manifest="results/kb/{kb}/{kb_type}/manifest.json",
    params:
        outdir=subpath(output.manifest, parent=True),
        embeddings=embeddings_flag,
        model=kb_setting("embedding_model"),
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
        "python -m nanochat.retrieval --chunks {input.chunks:q} {params.embeddings} --output {params.outdir:q}"
        " --type {wildcards.kb_type} --model {params.model:q} > {log:q} 2>&1"
