"""nanochat RAG/REFRAG workflow: documents -> knowledge base -> retrieval -> dataset -> fine-tune -> evaluation -> report.

    snakemake --cores all                                   # the bundled example (config/config.yaml)
    snakemake --cores all --configfile my.yaml              # your documents and runs
    snakemake --profile profiles/slurm                      # on a SLURM cluster
    snakemake --report report.html                          # metrics table and plots

All logic lives in nanochat/ and scripts/; rules only wire files to their CLIs.
"""
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "rules/common.smk"


wildcard_constraints:
    kb="|".join(KBS),
    run="|".join(RUNS),
    size="|".join(sorted(config["models"])),
    kb_type="|".join(RETRIEVERS),

include: "rules/documents.smk"
include: "rules/knowledge_base.smk"
include: "rules/model.smk"
include: "rules/retrieval.smk"
include: "rules/dataset.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    """Every run's evaluation and the cross-run report."""
    input:
        final_outputs(),
    default_target: True
