"""Rule base_train: scripts.base_train, then the done-marker (base_model.json) that Snakemake tracks."""
from nanochat.pipeline.jobs import call_main
from nanochat.pipeline.launch import mark_checkpoint

p = snakemake.params  # noqa: F821 (injected by Snakemake)
call_main(snakemake, "scripts.base_train", [  # noqa: F821
    "--knowledge_base", p.kb_dir, "--tokenizer", p.tokenizer_dir, "--model_tag", p.model_tag,
    "--base_dir", p.base_dir, "--device", p.device, "--depth", p.depth, "--n_embd", p.n_embd,
    "--block_pattern", p.block_pattern, "--max_seq_len", p.max_seq_len, "--max_steps", p.max_steps,
    "--device_batch_size", p.device_batch_size])
mark_checkpoint(p.checkpoint_dir, snakemake.output.marker)  # noqa: F821
