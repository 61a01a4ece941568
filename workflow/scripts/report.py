"""Rule report: every run's metrics.json -> one table (CSV) and one comparison plot."""
from nanochat.pipeline.report import collect_metrics
from nanochat.pipeline.jobs import log_to

with log_to(snakemake.log[0]):  # noqa: F821 (injected by Snakemake)
    collect_metrics(snakemake.input.metrics, snakemake.params.runs,  # noqa: F821
                    snakemake.output.table, snakemake.output.plot)  # noqa: F821
