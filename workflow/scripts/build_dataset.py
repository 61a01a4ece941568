"""Rule build_dataset: nanochat.rag.dataset (RAFT mix, single-hop or multi_hop by the run's mode -> tokenised
{train,val} shards + manifest.json)."""
from nanochat.pipeline.jobs import call_main

i, p = snakemake.input, snakemake.params  # noqa: F821 (injected by Snakemake)
call_main(snakemake, "nanochat.rag.dataset", [  # noqa: F821
    *p.mode_flags.split(), "--knowledge_base", p.kb_dir, "--retrieval", i.retrieval, "--queries_train", i.train,
    "--queries_val", i.val, "--tokenizer", p.tokenizer_dir, "--top_k", p.top_k, "--p_gold", p.p_gold,
    "--max_seq_len", p.max_seq_len, "--max_doc_length", p.max_doc_length, "--seed", p.seed, "--output", p.outdir])
