"""Tokenizer and base model, per knowledge base: they read the KB text only, never retrieval settings.

A models entry either gives sizes to train from scratch (train_tokenizer, base_train), or names an existing
nanochat checkpoint (`checkpoint:`, upstream's or this project's): import_model copies it in once with its own
tokenizer, and with a `hybridize:` block, hybridize turns it into a Transformer/Mamba hybrid per knowledge base.

REQUIRED INPUTS: results/kb/<kb>/simple/manifest.json (the KB text); for `checkpoint:` entries, its files
OUTPUTS: results/models/<kb>/tokenizer/tokenizer_meta.json, results/models/<kb>/<size>/base_model.json
(the base checkpoint itself lives in <base_dir>/base_checkpoints/<kb>.<size>/; base_model.json is its done-marker);
results/imported/<size>/model.json + tokenizer/ (the import's copy is <base_dir>/base_checkpoints/<size>/)
"""

reads_config("base_dir", "device", "tokenizer", "models")


rule train_tokenizer:
    """Train the BPE tokenizer on the KB text (tokenizer_meta.json is written last)."""
    input:
        kb=text_kb,
        code=code_of("workflow/scripts/train_tokenizer.py"),
    output:
        meta="results/models/{kb}/tokenizer/tokenizer_meta.json",
    params:
        kb_dir=subpath(input.kb, parent=True),
        outdir=subpath(output.meta, parent=True),
        vocab_size=lookup(within=config, dpath="tokenizer/vocab_size"),
    log:
        "logs/train_tokenizer/{kb}.log",
    benchmark:
        "benchmarks/train_tokenizer/{kb}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
        gpu=0,
    conda:
        ENV_CPU
    script:
        "../workflow/scripts/train_tokenizer.py"


rule base_train:
    """Pretrain a small hybrid base model from scratch on the KB text, then write its done-marker."""
    input:
        kb=text_kb,
        tokenizer="results/models/{kb}/tokenizer/tokenizer_meta.json",
        code=code_of("workflow/scripts/base_train.py"),
    output:
        marker="results/models/{kb}/{size}/base_model.json",
    wildcard_constraints:
        size=models_matching(lambda m: not wf_config.is_pretrained(m)),
    params:
        kb_dir=subpath(input.kb, parent=True),
        tokenizer_dir=subpath(input.tokenizer, parent=True),
        model_tag=base_model_tag,
        checkpoint_dir=base_checkpoint_dir,
        base_dir=config["base_dir"],
        device=config["device"],
        depth=model_setting("depth"),
        n_embd=model_setting("n_embd"),
        block_pattern=model_setting("block_pattern"),
        max_seq_len=model_setting("max_seq_len"),
        max_steps=model_setting("max_steps"),
        device_batch_size=model_setting("device_batch_size"),
    log:
        "logs/base_train/{kb}.{size}.log",
    benchmark:
        "benchmarks/base_train/{kb}.{size}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1,
    conda:
        ENV_GPU
    script:
        "../workflow/scripts/base_train.py"


rule import_model:
    """Copy an existing nanochat checkpoint into <base_dir>/base_checkpoints/<size>/ as the project's checkpoint
    (upstream's eras, bf16 and tokenizer.pkl read as load_model does), write its tokenizer, then the done-marker."""
    input:
        checkpoint=imported_checkpoint_files,
        code=code_of("workflow/scripts/import_model.py"),
    output:
        marker="results/imported/{size}/model.json",
        tokenizer="results/imported/{size}/tokenizer/tokenizer_meta.json",
    wildcard_constraints:
        size=models_matching(wf_config.is_pretrained),
    params:
        source_base_dir=checkpoint_setting("base_dir"),
        source=checkpoint_setting("source", "base"),
        model_tag=checkpoint_setting("model_tag"),
        step=checkpoint_setting("step"),
        base_dir=config["base_dir"],
        output_tag="{size}",
        checkpoint_dir=f"{config['base_dir']}/base_checkpoints/{{size}}",
        outdir=subpath(output.tokenizer, parent=True),
        require_mamba=requires_mamba,
    log:
        "logs/import_model/{size}.log",
    benchmark:
        "benchmarks/import_model/{size}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
        gpu=0,
    conda:
        ENV_CPU
    script:
        "../workflow/scripts/import_model.py"


rule hybridize:
    """Attention layers of the imported checkpoint -> Mamba-2 mixers initialised from them, distilled from it on the
    KB text (torchrun; resumes like the fine-tunes), then the done-marker runs start from."""
    input:
        kb=text_kb,
        teacher=imported_model,
        code=code_of("nanochat.pipeline.launch", "scripts.hybridize"),
    output:
        marker="results/models/{kb}/{size}/base_model.json",
    wildcard_constraints:
        size=models_matching(wf_config.is_hybridized),
    params:
        launcher=model_launcher,
        kb_dir=subpath(input.kb, parent=True),
        checkpoint_dir=base_checkpoint_dir,
        base_dir=config["base_dir"],
        device=config["device"],
        flags=hybridize_flags,
    log:
        "logs/hybridize/{kb}.{size}.log",
    benchmark:
        "benchmarks/hybridize/{kb}.{size}.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=1,
    conda:
        ENV_GPU
    shell:
        "python -m nanochat.pipeline.launch prepare_resume --checkpoint_dir {params.checkpoint_dir:q}"
        " --inputs {input.kb:q} {input.teacher:q} {input.code:q} --settings {params.flags:q} > {log:q} 2>&1"
        " && {params.launcher} -m scripts.hybridize --knowledge_base {params.kb_dir:q} --base_dir {params.base_dir:q}"
        " --device {params.device:q} {params.flags} --save_every 0 --keep_last 2 --num_threads {threads} --resume true"
        " >> {log:q} 2>&1"
        " && python -m nanochat.pipeline.launch mark_checkpoint --checkpoint_dir {params.checkpoint_dir:q}"
        " --output {output.marker:q} >> {log:q} 2>&1"
