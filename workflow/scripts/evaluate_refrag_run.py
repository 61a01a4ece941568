"""Rule evaluate_refrag_run: scripts.refrag_eval on the held-out test queries (REFRAG vs RAG vs no retrieval)."""
import shlex

from nanochat.pipeline.jobs import call_main

i, p = snakemake.input, snakemake.params  # noqa: F821 (injected by Snakemake)
call_main(snakemake, "scripts.refrag_eval", [  # noqa: F821
    "--knowledge_base", p.kb_dir, "--retrieval", i.retrieval, "--queries_test", i.test,
    "--model_tag", snakemake.wildcards.run, "--base_dir", p.base_dir, "--device", p.device,  # noqa: F821
    "--max_tokens", p.max_new_tokens, "--max_questions", p.max_questions, "--output", p.eval_dir,
    "--num_threads", snakemake.threads, *shlex.split(p.compare), *shlex.split(p.extra)])  # noqa: F821
