"""Rule check_leakage: nanochat.data.leakage (exits non-zero above max_leak_rate, which stops the run)."""
from nanochat.pipeline.jobs import call_main

i = snakemake.input  # noqa: F821 (injected by Snakemake)
call_main(snakemake, "nanochat.data.leakage", [  # noqa: F821
    "--train", i.train, "--heldout", f"val={i.val}", f"test={i.test}",
    "--output", snakemake.output.report, "--max_leak_rate", snakemake.params.max_leak_rate])  # noqa: F821
