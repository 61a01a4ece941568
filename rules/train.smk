"""Fine-tuning: torchrun over scripts.rag_finetune (rag runs) or scripts.refrag_finetune (refrag runs).

REQUIRED INPUTS: results/runs/<run>/dataset/manifest.json, the base model's done-marker, the run's KB
OUTPUTS: <base_dir>/{rag,refrag}_checkpoints/<run>/done.json, written last by the library. Only done.json is a
Snakemake output: the checkpoints beside it survive a failed or interrupted job, and the next attempt passes
--resume. nanochat.pipeline prepare_resume first moves checkpoints aside when the run's inputs, code or settings
changed, so a resume never continues from stale training (the checkpoint cadence, runs.<run>.train.save_every,
save_every_minutes and keep_last, is not such a setting).

Crash safety: periodic checkpoints from the config; SIGTERM/SIGUSR1 (SLURM time limit, preemption) checkpoint
before exiting; `nanochat.pipeline.launch torchrun` execs the launcher with a parent-death signal and the workers follow
torchrun, so a
killed Snakemake leaves no trainer behind; one trainer per checkpoint directory (trainer.lock).

GPUs: a run's train.gpus is torchrun's --nproc_per_node and, times train.nodes, the rule's `gpu` resource, so
`snakemake --resources gpu=8` runs one 8-GPU fine-tune (1 CPU process where no GPU is visible). train.nodes > 1
(SLURM profile): one srun task per node, torchrun's c10d rendezvous at the allocation's first node
(nanochat/pipeline/launch.py, profiles/slurm/config.yaml).
"""

reads_config("base_dir", "device", "runs")


rule rag_finetune:
    """Single-hop RAG fine-tuning of the base model on the run's precomputed conversations."""
    input:
        kb=run_kb,
        dataset="results/runs/{run}/dataset/manifest.json",
        base_model=run_base_model,
        code=code_of("nanochat.pipeline.launch", "scripts.rag_finetune"),
    output:
        done=f"{config['base_dir']}/rag_checkpoints/{{run}}/done.json",
    wildcard_constraints:
        run=runs_in_mode("rag"),
    params:
        launcher=torchrun_launcher,
        kb_dir=subpath(input.kb, parent=True),
        dataset_dir=subpath(input.dataset, parent=True),
        checkpoint_dir=subpath(output.done, parent=True),
        flags=finetune_flags,
    log:
        "logs/rag_finetune/{run}.log",
    benchmark:
        "benchmarks/rag_finetune/{run}.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=train_resource("gpu"),
        nodes=train_resource("nodes"),
        mpi=train_resource("mpi"),
        tasks=train_resource("tasks"),
        tasks_per_gpu=train_resource("tasks_per_gpu"),
    conda:
        ENV_GPU
    shell:
        "python -m nanochat.pipeline.launch prepare_resume --checkpoint_dir {params.checkpoint_dir:q}"
        " --inputs {input.kb:q} {input.dataset:q} {input.base_model:q} {input.code:q} --settings {params.flags:q}"
        " > {log:q} 2>&1"
        " && exec {params.launcher} -m scripts.rag_finetune --knowledge_base {params.kb_dir:q}"
        " --dataset {params.dataset_dir:q} {params.flags} --num_threads {threads} --resume true >> {log:q} 2>&1"


rule refrag_finetune:
    """Multi-hop REFRAG fine-tuning (supervised warm-up, then reward-driven updates when use_rewards)."""
    input:
        kb=run_kb,
        dataset="results/runs/{run}/dataset/manifest.json",
        retrieval="results/runs/{run}/retrieval.parquet",
        train=run_query("train"),
        val=run_query("val"),
        start_model=run_start_model,
        code=code_of("nanochat.pipeline.launch", "scripts.refrag_finetune"),
    output:
        done=f"{config['base_dir']}/refrag_checkpoints/{{run}}/done.json",
    wildcard_constraints:
        run=runs_in_mode("refrag"),
    # before the rag evaluation that becomes ready at the same time: the two evaluations then run side by side
    priority: 10
    params:
        launcher=torchrun_launcher,
        kb_dir=subpath(input.kb, parent=True),
        dataset_dir=subpath(input.dataset, parent=True),
        checkpoint_dir=subpath(output.done, parent=True),
        flags=finetune_flags,
    log:
        "logs/refrag_finetune/{run}.log",
    benchmark:
        "benchmarks/refrag_finetune/{run}.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=480,
        gpu=train_resource("gpu"),
        nodes=train_resource("nodes"),
        mpi=train_resource("mpi"),
        tasks=train_resource("tasks"),
        tasks_per_gpu=train_resource("tasks_per_gpu"),
    conda:
        ENV_GPU
    shell:
        "python -m nanochat.pipeline.launch prepare_resume --checkpoint_dir {params.checkpoint_dir:q}"
        " --inputs {input.kb:q} {input.dataset:q} {input.retrieval:q} {input.start_model:q} {input.code:q}"
        " --settings {params.flags:q}"
        " > {log:q} 2>&1"
        " && exec {params.launcher} -m scripts.refrag_finetune --knowledge_base {params.kb_dir:q}"
        " --dataset {params.dataset_dir:q} --retrieval {input.retrieval:q} --queries_train {input.train:q}"
        " --queries_val {input.val:q} {params.flags} --num_threads {threads} --resume true >> {log:q} 2>&1"
