"""Held-out evaluation of each fine-tuned run on its test queries (answers, citations, retrieval recall).

REQUIRED INPUTS: the run's done-marker, retrieval.parquet, test queries, KB
OUTPUTS: results/runs/<run>/eval/metrics.json (carries the KB's kb_id), per_question.csv
rag runs: scripts.rag_eval (retrieval vs no retrieval vs oracle documents vs counterfactual documents; failure
classes; an optional abstention threshold, calibrated on the run's validation queries).
refrag runs: scripts.refrag_eval (REFRAG vs the compare_with RAG run vs no retrieval, EM by hop count, per-hop
recall, reward curve, counterfactual documents, failure classes; optionally adaptive hopping).
"""

reads_config("base_dir", "device", "runs")


rule evaluate_run:
    """Answer every test question with the fine-tuned model over precomputed retrieval; score EM/F1/citations."""
    input:
        kb=run_kb,
        model=run_checkpoint_done,
        retrieval="results/runs/{run}/retrieval.parquet",
        test=run_query("test"),
        val=run_query("val"),
        code=code_of("workflow/scripts/evaluate_run.py"),
    output:
        metrics="results/runs/{run}/eval/metrics.json",
        per_question="results/runs/{run}/eval/per_question.csv",
    wildcard_constraints:
        run=runs_in_mode("rag"),
    params:
        kb_dir=subpath(input.kb, parent=True),
        eval_dir=subpath(output.metrics, parent=True),
        source=run_setting("mode"),
        base_dir=config["base_dir"],
        device=config["device"],
        top_k=run_setting("top_k"),
        max_new_tokens=run_setting("evaluate/max_new_tokens"),
        max_questions=run_setting("evaluate/max_questions"),
        extra=eval_flags,
    log:
        "logs/evaluate_run/{run}.log",
    benchmark:
        "benchmarks/evaluate_run/{run}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=1,
    conda:
        ENV_GPU
    script:
        "../workflow/scripts/evaluate_run.py"


rule evaluate_refrag_run:
    """REFRAG vs RAG vs no retrieval on the same test questions, over precomputed multi-hop retrieval."""
    input:
        unpack(compared_rag_run),
        kb=run_kb,
        model=run_checkpoint_done,
        retrieval="results/runs/{run}/retrieval.parquet",
        test=run_query("test"),
        code=code_of("workflow/scripts/evaluate_refrag_run.py"),
    output:
        metrics="results/runs/{run}/eval/metrics.json",
        per_question="results/runs/{run}/eval/per_question.csv",
    wildcard_constraints:
        run=runs_in_mode("refrag"),
    params:
        kb_dir=subpath(input.kb, parent=True),
        eval_dir=subpath(output.metrics, parent=True),
        base_dir=config["base_dir"],
        device=config["device"],
        compare=compare_flags,
        max_new_tokens=run_setting("evaluate/max_new_tokens"),
        max_questions=run_setting("evaluate/max_questions"),
        extra=eval_flags,
    log:
        "logs/evaluate_refrag_run/{run}.log",
    benchmark:
        "benchmarks/evaluate_refrag_run/{run}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=1,
    conda:
        ENV_GPU
    script:
        "../workflow/scripts/evaluate_refrag_run.py"
