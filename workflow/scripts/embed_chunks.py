"""Rule embed_chunks: nanochat.embeddings (chunks.parquet -> embeddings.npy)."""
from nanochat.workflow_tools import call_main

p = snakemake.params  # noqa: F821 (injected by Snakemake)
call_main(snakemake, "nanochat.embeddings",  # noqa: F821
          ["--chunks", snakemake.input.chunks, "--output", snakemake.output.embeddings,  # noqa: F821
           "--model", p.model, "--batch_size", p.batch_size])
