"""Rule validate_documents: nanochat.data.documents (valid records + rejected records with reasons)."""
from nanochat.pipeline.jobs import call_main

i, o = snakemake.input, snakemake.output  # noqa: F821 (injected by Snakemake)
call_main(snakemake, "nanochat.data.documents",  # noqa: F821
          ["--input", i.documents, "--output", o.valid, "--rejected", o.rejected, "--mode", snakemake.params.mode])  # noqa: F821
