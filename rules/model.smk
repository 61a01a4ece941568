"""Tokenizer and base model, per knowledge base: they read the KB text only, never retrieval settings.

REQUIRED INPUTS: results/kb/<kb>/simple/manifest.json (the KB text)
OUTPUTS: results/models/<kb>/tokenizer/tokenizer_meta.json, results/models/<kb>/<size>/base_model.json
(the base checkpoint itself lives in <base_dir>/base_checkpoints/<kb>.<size>/; base_model.json is its done-marker)
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
