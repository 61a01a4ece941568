"""The workflow's glue (Snakemake rules, dvc.yaml): config checks, launching, the cross-run report."""
