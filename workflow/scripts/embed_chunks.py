"""Rules embed_chunks, embed_shard: nanochat.retrieval.embeddings (chunks.parquet -> embeddings.npy), through the cache."""
from nanochat.pipeline.jobs import call_main

p = snakemake.params  # noqa: F821 (injected by Snakemake)
call_main(snakemake, "nanochat.retrieval.embeddings",  # noqa: F821
          ["--chunks", snakemake.input.chunks, "--output", snakemake.output.embeddings,  # noqa: F821
           "--model", p.model, "--batch_size", p.batch_size, "--cache", p.cache])
