"""The optional retriever stages in the workflow: fine-tuned encoder, tuned hybrid weight, reranker.

    python -m pytest -q tests/workflow/test_retriever_tuning_workflow.py
"""
import json
import subprocess
import sys

import pytest

from wfhelpers import ROOT, copy_workflow, snakemake

CONFIG = "tests/workflow/config_retriever_tuning.yaml"


def jobs_of(configfile):
    code = ("import json, collections; from nanochat.pipeline.dvc import snakemake_jobs; "
            f"print(json.dumps(collections.Counter(j['rule'] for j in snakemake_jobs(configfile={configfile!r}))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, text=True, capture_output=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_stages_join_the_dag_only_when_configured():
    jobs = jobs_of(CONFIG)
    for rule in ("generate_retriever_questions", "embed_chunks_stock", "build_stock_index", "finetune_embedder",
                 "train_reranker", "embed_chunks"):
        assert jobs.get(rule) == 1, (rule, jobs)
    default = jobs_of("config/config.yaml")
    assert not {"finetune_embedder", "train_reranker", "embed_chunks_stock"} & set(default)


def test_config_checks_name_the_missing_piece():
    import yaml
    from nanochat.pipeline.config import check_config_references
    cfg = yaml.safe_load((ROOT / CONFIG).read_text())
    cfg["knowledge_bases"]["tiny"].pop("reranker")
    with pytest.raises(ValueError, match="runs.tiny_rag.rerank: knowledge base 'tiny' has no reranker"):
        check_config_references(cfg)
    cfg = yaml.safe_load((ROOT / CONFIG).read_text())
    cfg["knowledge_bases"]["tiny"].pop("finetune_embedder")
    with pytest.raises(ValueError, match="reranker: it trains on the questions of finetune_embedder"):
        check_config_references(cfg)
    cfg = yaml.safe_load((ROOT / CONFIG).read_text())
    q = cfg["runs"]["tiny_rag"]["queries"]
    cfg["knowledge_bases"]["tiny"]["finetune_embedder"]["queries"] = {"train": q["train"], "val": q["test"]}
    with pytest.raises(ValueError, match="finetune_embedder.queries.val: .* is the test file of runs.tiny_rag"):
        check_config_references(cfg)


@pytest.mark.slow
def test_tuned_retrieval_end_to_end(tmp_path):
    """Up to the run's retrieval table: the KB carries the fine-tuned model's hash and the tuned weight, and the
    table was reranked by the trained cross-encoder."""
    work = copy_workflow(tmp_path)
    snakemake(work, "--cores", "2", "--configfile", CONFIG, "--replace-workflow-config",
              "results/runs/tiny_rag/retrieval.parquet", timeout=1800)
    emb = json.loads((work / "results/kb/tiny/embedder/training.json").read_text())
    rr = json.loads((work / "results/kb/tiny/reranker/training.json").read_text())
    kb = json.loads((work / "results/kb/tiny/hybrid/manifest.json").read_text())
    stock = json.loads((work / "results/kb/tiny/stock/manifest.json").read_text())
    meta = json.loads((work / "results/runs/tiny_rag/retrieval.parquet.meta.json").read_text())
    assert kb["embedding"]["model"] == emb["model_id"] != stock["embedding"]["model"]
    assert kb["retrievers"]["hybrid"]["settings"]["tuned"]["split"] == "val"
    assert meta["key"]["kb_id"] == kb["kb_id"] and meta["key"]["rerank"] == {"model": rr["model_id"], "depth": 5}
    assert emb["data"]["train_questions"] > 0 and emb["data"]["val_questions"] > 0
