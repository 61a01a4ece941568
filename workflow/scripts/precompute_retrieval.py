"""Rules precompute_retrieval, precompute_block: nanochat.retrieval.precompute (k_max chunks per query and hop, all splits
or one block of each)."""
from nanochat.pipeline.jobs import call_main

i, p = snakemake.input, snakemake.params  # noqa: F821 (injected by Snakemake)
call_main(snakemake, "nanochat.retrieval.precompute", [  # noqa: F821
    "--knowledge_base", p.kb_dir, "--retriever_type", p.retriever_type,
    "--queries", f"train={i.train}", f"val={i.val}", f"test={i.test}",
    "--k_max", p.k_max, *p.hops.split(), *p.rerank.split(), *p.extra.split(), "--output", snakemake.output.retrieval])  # noqa: F821
