"""Cross-run report, embedded in `snakemake --report report.html`: the metrics table, a comparison plot, and per
run EM by hop count (with retrieval, without, oracle), failure classes, recall@k curves and citation precision/recall.

REQUIRED INPUTS: results/runs/<run>/eval/metrics.json for every run
OUTPUTS: results/report/metrics.csv, metrics.png, em_by_hops.png, failure_classes.png, recall_at_k.png, citations.png
"""

reads_config()  # only the run names, which dvc.yaml already spells out in its deps


rule report:
    """Collect every run's metrics (with its kb_id) into one table and plot them side by side, with the figures
    that tell why answers fail."""
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
        em_by_hops=report(
            "results/report/em_by_hops.png",
            caption="../workflow/report/em_by_hops.rst",
            category="Answers",
        ),
        failures=report(
            "results/report/failure_classes.png",
            caption="../workflow/report/failure_classes.rst",
            category="Answers",
        ),
        recall=report(
            "results/report/recall_at_k.png",
            caption="../workflow/report/recall_at_k.rst",
            category="Retrieval",
        ),
        citations=report(
            "results/report/citations.png",
            caption="../workflow/report/citations.rst",
            category="Answers",
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
