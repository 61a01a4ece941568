"""Rule import_model: scripts.import_nanochat (an existing checkpoint -> <base_dir>/base_checkpoints/<model>/ and its
tokenizer), then the done-marker (model.json) that Snakemake tracks."""
from nanochat.pipeline.jobs import call_main
from nanochat.pipeline.launch import mark_checkpoint

p = snakemake.params  # noqa: F821 (injected by Snakemake)
step = [] if p.step is None else ["--step", p.step]
call_main(snakemake, "scripts.import_nanochat", [  # noqa: F821
    "--base_dir", p.source_base_dir, "--source", p.source, "--model_tag", p.model_tag, *step,
    "--output_base_dir", p.base_dir, "--output_tag", p.output_tag, "--tokenizer_out", p.outdir,
    "--require_mamba", p.require_mamba])
mark_checkpoint(p.checkpoint_dir, snakemake.output.marker)  # noqa: F821
