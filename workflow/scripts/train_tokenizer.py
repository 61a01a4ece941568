"""Rule train_tokenizer: scripts.tok_train on the KB text."""
from nanochat.pipeline.jobs import call_main

p = snakemake.params  # noqa: F821 (injected by Snakemake)
call_main(snakemake, "scripts.tok_train",  # noqa: F821
          ["--knowledge_base", p.kb_dir, "--vocab_size", p.vocab_size, "--output", p.outdir])
