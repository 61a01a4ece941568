"""Retrievers trained on the KB's own questions (knowledge_bases.<kb>.finetune_embedder, .reranker): optional stages.

REQUIRED INPUTS: results/kb/<kb>/chunks.parquet and the KB's train/val questions (finetune_embedder.queries), or
results/kb/<kb>/simple/ to generate them from the documents
OUTPUTS: results/kb/<kb>/embedder/ (fine-tuned sentence-transformers model + training.json; its content hash is the
KB's embedder id, so the KB's kb_id changes with it), results/kb/<kb>/reranker/ (cross-encoder + training.json),
results/kb/<kb>/questions/queries_{train,val}.jsonl (generated questions), results/kb/<kb>/stock/ (the stock-model
KB the hard negatives are mined from)
"""

reads_config("knowledge_bases", "embedding_cache")


rule generate_retriever_questions:
    """Questions generated from the documents for a KB without its own (val held out by document)."""
    input:
        kb=text_kb,
        code=code_of("nanochat.data.doc_questions"),
    output:
        train="results/kb/{kb}/questions/queries_train.jsonl",
        val="results/kb/{kb}/questions/queries_val.jsonl",
    params:
        kb_dir=subpath(input.kb, parent=True),
        outdir=subpath(output.train, parent=True),
        n=finetune_setting("generated_questions"),
    log:
        "logs/generate_retriever_questions/{kb}.log",
    benchmark:
        "benchmarks/generate_retriever_questions/{kb}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
        gpu=0,
    conda:
        ENV_CPU
    shell:
        "python -m nanochat.data.doc_questions --knowledge_base {params.kb_dir:q} --n {params.n}"
        " --output {params.outdir:q} > {log:q} 2>&1"


rule embed_chunks_stock:
    """Encode the chunks with the stock model (embedding_model) for the index hard negatives are mined from."""
    input:
        chunks="results/kb/{kb}/chunks.parquet",
        code=code_of("workflow/scripts/embed_chunks.py"),
    output:
        embeddings="results/kb/{kb}/stock_embeddings.npy",
        info="results/kb/{kb}/stock_embeddings.json",
    params:
        model=kb_setting("embedding_model"),
        batch_size=kb_setting("embedding_batch_size"),
        cache=config["embedding_cache"],
    log:
        "logs/embed_chunks_stock/{kb}.log",
    benchmark:
        "benchmarks/embed_chunks_stock/{kb}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=0,
    conda:
        ENV_CPU
    script:
        "../workflow/scripts/embed_chunks.py"


rule build_stock_index:
    """BM25 + dense indexes over the stock embeddings: the KB's own results, where hard negatives come from."""
    input:
        chunks="results/kb/{kb}/chunks.parquet",
        embeddings="results/kb/{kb}/stock_embeddings.npy",
        embedder_info="results/kb/{kb}/stock_embeddings.json",
        code=code_of("nanochat.retrieval"),
    output:
        manifest="results/kb/{kb}/stock/manifest.json",
    params:
        outdir=subpath(output.manifest, parent=True),
    log:
        "logs/build_stock_index/{kb}.log",
    benchmark:
        "benchmarks/build_stock_index/{kb}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=0,
    conda:
        ENV_CPU
    shell:
        "python -m nanochat.retrieval --chunks {input.chunks:q} --embeddings {input.embeddings:q}"
        " --embedder_info {input.embedder_info:q} --output {params.outdir:q} --type bm25,dense > {log:q} 2>&1"


rule finetune_embedder:
    """Fine-tune the dense encoder on the KB's train questions (hard negatives from its BM25 + dense), select on val."""
    input:
        kb="results/kb/{kb}/stock/manifest.json",
        train=tuning_query("train"),
        val=tuning_query("val"),
        code=code_of("nanochat.retrieval.finetune"),
    output:
        model=directory("results/kb/{kb}/embedder"),
    params:
        kb_dir=subpath(input.kb, parent=True),
        flags=tuning_flags("finetune_embedder"),
    log:
        "logs/finetune_embedder/{kb}.log",
    benchmark:
        "benchmarks/finetune_embedder/{kb}.tsv"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=120,
        gpu=0,
    conda:
        ENV_CPU
    shell:
        "python -m nanochat.retrieval.finetune --knowledge_base {params.kb_dir:q} --train {input.train:q}"
        " --val {input.val:q} --output {output.model:q} {params.flags} > {log:q} 2>&1"


rule train_reranker:
    """Train the cross-encoder reranker from the KB's MiniLM weights on the same questions, select on val."""
    input:
        kb="results/kb/{kb}/stock/manifest.json",
        train=tuning_query("train"),
        val=tuning_query("val"),
        code=code_of("nanochat.retrieval.rerank"),
    output:
        model=directory("results/kb/{kb}/reranker"),
    params:
        kb_dir=subpath(input.kb, parent=True),
        flags=tuning_flags("reranker"),
    log:
        "logs/train_reranker/{kb}.log",
    benchmark:
        "benchmarks/train_reranker/{kb}.tsv"
    threads: 2
    resources:
        mem_mb=6000,
        runtime=120,
        gpu=0,
    conda:
        ENV_CPU
    shell:
        "python -m nanochat.retrieval.rerank --knowledge_base {params.kb_dir:q} --train {input.train:q}"
        " --val {input.val:q} --output {output.model:q} {params.flags} > {log:q} 2>&1"
