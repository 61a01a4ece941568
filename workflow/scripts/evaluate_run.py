"""Rule evaluate_run: scripts.rag_eval on the held-out test queries (metrics.json carries the KB's kb_id)."""
import shlex

from nanochat.pipeline.jobs import call_main

i, p = snakemake.input, snakemake.params  # noqa: F821 (injected by Snakemake)
call_main(snakemake, "scripts.rag_eval", [  # noqa: F821
    "--knowledge_base", p.kb_dir, "--retrieval", i.retrieval, "--queries_test", i.test,
    "--source", p.source, "--model_tag", snakemake.wildcards.run, "--base_dir", p.base_dir,  # noqa: F821
    "--device", p.device, "--top_k", p.top_k, "--max_tokens", p.max_new_tokens,
    "--max_questions", p.max_questions, "--output", p.eval_dir, "--num_threads", snakemake.threads,  # noqa: F821
    "--queries_val", i.val, *shlex.split(p.extra)])
