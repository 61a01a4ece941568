"""Scale in the workflow: shard and precompute-block DAG, resource arithmetic of N-GPU / N-node fine-tunes, the
launcher's commands as text, and (slow) a sharded tiny DAG equal to the one-job DAG.

    python -m pytest -q tests/workflow/test_scale.py
"""
import json
import re
import subprocess
import sys

import pytest
import yaml

from nanochat.pipeline import config as wf_config
from nanochat.pipeline import launch as wf_launch
from wfhelpers import ROOT, TINY, copy_workflow, dry_run, snakemake

SCALE = "tests/workflow/config_scale.yaml"


def jobs_of(configfile, *extra):
    code = ("import json, collections; from nanochat.pipeline.dvc import snakemake_jobs; "
            f"print(json.dumps(collections.Counter(j['rule'] for j in snakemake_jobs(configfile={configfile!r}))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, text=True, capture_output=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_config(work, name, edit):
    config = yaml.safe_load((ROOT / TINY).read_text())
    edit(config)
    (work / name).write_text(yaml.safe_dump(config))
    return name


def test_four_kbs_four_shards_three_runs_dag_shape():
    jobs = jobs_of(SCALE)
    assert jobs["chunk_shard"] == jobs["embed_shard"] == jobs["bm25_tokens"] == 16  # 4 KBs x 4 shards
    assert jobs["gather_chunks"] == jobs["gather_embeddings"] == 4 and "chunk_documents" not in jobs
    assert jobs["precompute_block"] == 12 and jobs["gather_retrieval"] == 6 and jobs["precompute_retrieval"] == 6
    assert jobs["rag_finetune"] + jobs["refrag_finetune"] == 12 and jobs["build_index"] == 13


def test_set_scatter_overrides_the_shard_count(tmp_path):
    work = copy_workflow(tmp_path)
    jobs = dry_run(work, "--cores", "1", "--configfile", TINY, "--replace-workflow-config", "--set-scatter", "kb_tiny=3",
                   "run_tiny_rag=2", "--", "results/runs/tiny_rag/retrieval.parquet")
    assert jobs["chunk_shard"] == 3 and jobs["gather_chunks"] == 1 and jobs["bm25_tokens"] == 3
    assert jobs["precompute_block"] == 2 and jobs["gather_retrieval"] == 1 and "embed_shard" not in jobs  # bm25 only


def job_blocks(output: str) -> dict:
    """rule -> (resources line, shell command) of each job printed by `snakemake -n -p`."""
    blocks = {}
    for block in output.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0].strip()
        res = re.search(r"resources: (.*)", block)
        shell = [line for line in block.splitlines()[1:] if line and not line.startswith((" ", "\t"))]
        blocks[rule] = (res.group(1) if res else "", "\n".join(shell))
    return blocks


def test_a_run_asks_for_its_gpus_and_nodes(tmp_path):
    """train.gpus x train.nodes is the rule's gpu resource (what --resources gpu=8 counts); torchrun's layout follows."""
    work = copy_workflow(tmp_path)

    def eight(config):
        config["runs"]["tiny_rag"]["train"].update(gpus=8)
        config["runs"]["tiny_refrag"]["train"].update(gpus=4, nodes=2)
    cfg = write_config(work, "gpus.yaml", eight)
    for target in ("rag", "refrag"):
        out = snakemake(work, "-n", "-p", "--cores", "2", "--resources", "gpu=8", "--configfile", cfg,
                        "--replace-workflow-config", "--forcerun", f"{target}_finetune", "--",
                        f"results/checkpoints/{target}_checkpoints/tiny_{target}/done.json").stdout
        res, shell = job_blocks(out)[f"{target}_finetune"]
        if target == "rag":
            assert "gpu=8" in res and "nodes=1" in res and "mpi" not in res
            assert "python -m nanochat.pipeline.launch torchrun --gpus 8 --nodes 1 --device cpu -- -m scripts.rag_finetune" in shell
        else:  # 2 nodes x 4 GPUs: 8 in all, an MPI-style SLURM job with one task per node
            assert "gpu=8" in res and "nodes=2" in res and "mpi=srun" in res and "tasks=2" in res and "tasks_per_gpu=0" in res
            assert "launch torchrun --gpus 4 --nodes 2 --device cpu -- -m scripts.refrag_finetune" in shell


def test_resource_arithmetic():
    run = {"train": {"gpus": 4, "nodes": 2}}
    assert (wf_config.train_gpus(run), wf_config.train_nodes(run), wf_config.gpu_resource(run)) == (4, 2, 8)
    assert wf_config.gpu_resource({"train": {}}) == 1
    config = {"knowledge_bases": {"a": {"shards": 4}, "b": {}}, "runs": {"r": {"precompute_shards": 2}, "s": {}}}
    assert wf_config.scatter_names(config) == {"kb_a": 4, "kb_b": 1, "run_r": 2, "run_s": 1}
    assert wf_config.dense_build_flags({"dense": {"index": "ivf_pq", "nprobe": 64, "pq_m": None}}) == "--index ivf_pq --nprobe 64"
    assert wf_config.search_flags({"retriever_type": "bm25", "search": {"nprobe": 8}}) == ""
    assert wf_config.search_flags({"retriever_type": "hybrid", "search": {"nprobe": 8, "refine": None}}) == "--nprobe 8"


def test_launcher_commands_as_text():
    rest = ["-m", "scripts.rag_finetune", "--knowledge_base", "kb"]
    assert wf_launch.torchrun_prefix(8, 1, "auto") == "python -m nanochat.pipeline.launch torchrun --gpus 8 --nodes 1 --device auto --"
    one = wf_launch.torchrun_argv(8, 1, "auto", rest, env={}, visible=8)
    assert one == ["torchrun", "--standalone", "--nproc_per_node=8", *rest]
    assert wf_launch.torchrun_argv(8, 1, "auto", rest, env={}, visible=0)[2] == "--nproc_per_node=1"  # CPU-only machine
    assert wf_launch.torchrun_argv(2, 1, "cpu", rest, env={}, visible=0)[2] == "--nproc_per_node=2"  # CPU DDP on request
    with pytest.raises(SystemExit, match="asks for 8 GPU"):
        wf_launch.torchrun_argv(8, 1, "auto", rest, env={}, visible=4)
    with pytest.raises(SystemExit, match="needs a SLURM allocation"):
        wf_launch.torchrun_argv(4, 2, "auto", rest, env={}, visible=4)
    # in the SLURM job: one srun task per node ...
    first = wf_launch.torchrun_argv(4, 2, "auto", rest, env={"SLURM_JOB_ID": "1234"}, head="gpu-a01")
    assert " ".join(first) == ("srun --ntasks=2 --kill-on-bad-exit=1 python -m nanochat.pipeline.launch torchrun --gpus 4 "
                               "--nodes 2 --device auto --head gpu-a01 -- -m scripts.rag_finetune --knowledge_base kb")
    # ... and each task starts torchrun, meeting at the first node
    node = wf_launch.torchrun_argv(4, 2, "auto", rest, env={"SLURM_JOB_ID": "1234", "SLURM_PROCID": "1"}, visible=4,
                                   head="gpu-a01")
    assert " ".join(node) == ("torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_id=1234 "
                              f"--rdzv_endpoint=gpu-a01:{29500 + 1234} -m scripts.rag_finetune --knowledge_base kb")


@pytest.mark.slow
def test_sharded_dag_gives_the_same_kb_and_retrieval(tmp_path):
    """The tiny DAG with 3 KB shards and 2 precompute blocks equals the one-job DAG: kb_id, KB files, retrieval tables."""
    results = {}
    for shards, blocks in ((1, 1), (3, 2)):
        work = copy_workflow(tmp_path / f"s{shards}")

        def edit(config):
            config["knowledge_bases"]["tiny"]["shards"] = shards
            config["runs"]["tiny_rag"].update(retriever_type="hybrid", precompute_shards=blocks)
            config["runs"]["tiny_refrag"].update(precompute_shards=blocks)
        cfg = write_config(work, "sharded.yaml", edit)
        targets = ["results/runs/tiny_rag/retrieval.parquet", "results/runs/tiny_refrag/retrieval.parquet"]
        snakemake(work, "--cores", "2", "--configfile", cfg, "--replace-workflow-config", *targets, timeout=1200)
        results[shards] = work
    one, three = results[1], results[3]
    assert (three / "results/kb/tiny/shards/3-of-3/chunks.parquet").is_file()
    for kb_type in ("hybrid", "bm25"):
        m1 = json.loads((one / f"results/kb/tiny/{kb_type}/manifest.json").read_text())
        m3 = json.loads((three / f"results/kb/tiny/{kb_type}/manifest.json").read_text())
        assert m1["kb_id"] == m3["kb_id"]
        assert m1["files"] == m3["files"]  # every KB file byte-identical (sha256 and size)
    import numpy as np
    import pandas as pd
    for run in ("tiny_rag", "tiny_refrag"):
        t = f"results/runs/{run}/retrieval.parquet"
        a, b = pd.read_parquet(one / t), pd.read_parquet(three / t)
        # the same hits in the same order; scores to float rounding (FAISS sums a block of queries in another order)
        pd.testing.assert_frame_equal(a.drop(columns="score"), b.drop(columns="score"))
        np.testing.assert_allclose(a["score"], b["score"], rtol=1e-5, atol=1e-6)
        meta = [{k: v for k, v in json.loads((w / f"{t}.meta.json").read_text()).items()
                 if k not in ("seconds", "queries_per_second", "table_sha256")}  # wall clock and score bits aside
                for w in (one, three)]
        assert meta[0] == meta[1]
