"""Cross-run report: one metrics table and one comparison plot, embedded in `snakemake --report report.html`.

REQUIRED INPUTS: results/runs/<run>/eval/metrics.json for every run
OUTPUTS: results/report/metrics.csv, results/report/metrics.png
"""

reads_config()  # only the run names, which dvc.yaml already spells out in its deps


rule report:
    """Collect every run's metrics (with its kb_id) into one table and plot them side by side."""
    input:
        metrics=expand("results/runs/{run}/eval/metrics.json", run=RUNS),
        code=code_of("workflow/scripts/report.py"),
    output:
        table=report(
            "results/report/metrics.csv",
            caption="../workflow/report/metrics_table.rst",
            category="Metrics",
        ),
        plot=report(
            "results/report/metrics.png",
            caption="../workflow/report/metrics_plot.rst",
            category="Metrics",
        ),
    params:
        runs=RUNS,
    log:
        "logs/report.log",
    benchmark:
        "benchmarks/report.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
        gpu=0,
    conda:
        ENV_CPU
    script:
        "../workflow/scripts/report.py"
