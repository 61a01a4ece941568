"""Rules chunk_documents, chunk_shard: nanochat.data.chunking (documents.jsonl -> chunks.parquet, or one shard's)."""
from nanochat.pipeline.jobs import call_main

p = snakemake.params  # noqa: F821 (injected by Snakemake)
call_main(snakemake, "nanochat.data.chunking",  # noqa: F821
          ["--input", snakemake.input.documents, "--output", snakemake.output.chunks,  # noqa: F821
           "--chunk_tokens", p.chunk_tokens, "--overlap", p.overlap, *p.shard])
