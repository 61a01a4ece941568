"""Rule synthetic_world: the guide's `prepare_rag_dataset --mode synthetic` into results/synthetic/."""
from nanochat.pipeline.jobs import call_main

p = snakemake.params  # noqa: F821 (injected by Snakemake)
call_main(snakemake, "scripts.prepare_rag_dataset",  # noqa: F821
          ["--mode", "synthetic", "--output", p.outdir, "--seed", p.seed, "--n_entities", p.n_entities,
           "--world", p.world])
