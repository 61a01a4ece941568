"""Rule report: every run's metrics.json -> one table (CSV), a comparison plot and the trust figures."""
from pathlib import Path

from nanochat.pipeline.jobs import log_to
from nanochat.pipeline.report import collect_metrics, trust_figures

with log_to(snakemake.log[0]):  # noqa: F821 (injected by Snakemake)
    collect_metrics(snakemake.input.metrics, snakemake.params.runs,  # noqa: F821
                    snakemake.output.table, snakemake.output.plot)  # noqa: F821
    trust_figures(snakemake.input.metrics, snakemake.params.runs,  # noqa: F821
                  Path(snakemake.output.plot).parent)  # noqa: F821
