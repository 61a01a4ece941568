"""Rule check_leakage: nanochat.leakage (exits non-zero above max_leak_rate, which stops the run)."""
from nanochat.workflow_tools import call_main

i = snakemake.input  # noqa: F821 (injected by Snakemake)
call_main(snakemake, "nanochat.leakage", [  # noqa: F821
    "--train", i.train, "--heldout", f"val={i.val}", f"test={i.test}",
    "--output", snakemake.output.report, "--max_leak_rate", snakemake.params.max_leak_rate])  # noqa: F821
