"""Sharded KB build on this machine: N shards vs one job, same KB, wall time.

    python -m bench.sharding --documents 2400 --shards 4

Builds the hybrid KB (chunk -> embed -> BM25 -> dense + bm25 indexes) of the first --documents passages of
bench/scale_data.py with the workflow, `snakemake --cores 2`, once with `shards: 1` and once with `shards: N`,
each in its own copy with its own cold embedding cache. On one machine the shards share the same 2 cores, so N
shards cannot be faster; the target is that sharding costs little (<= 1.2x the one-job wall time) and changes
nothing (same kb_id, same files). On a cluster the shard jobs run side by side (README "Large knowledge bases").
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "workflow"))
from wfhelpers import copy_workflow  # noqa: E402


def config(shards: int) -> dict:
    q = "tests/workflow/data/queries.jsonl"
    return {"knowledge_bases": {"k": {"documents": "docs.jsonl", "chunk_tokens": 512, "chunk_overlap": 0,
                                      "shards": shards}},
            "embedding_cache": "results/embedding_cache",
            "models": {"small": {"depth": 2, "n_embd": 32, "block_pattern": "T,M"}},
            "runs": {"r": {"knowledge_base": "k", "model": "small", "retriever_type": "hybrid",
                           "queries": {"train": q, "val": q, "test": q}}}}


def main(argv=None):
    from nanochat.cli import ArgumentParser
    from bench.scale_data import passages
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--documents", type=int, default=2400)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--work", default=None)
    args = p.parse_args(argv)
    tmp = Path(args.work or tempfile.mkdtemp(prefix="sharding."))
    chunks = passages(args.documents)
    docs = "".join(json.dumps({"id": i, "title": t, "content": c}) + "\n"
                   for i, t, c in zip(chunks["id"].str.replace("#0", ""), chunks["title"], chunks["content"]))
    target = "results/kb/k/hybrid/manifest.json"
    out = {}
    for n in (1, args.shards):
        work = copy_workflow(tmp / f"shards_{n}")
        (work / "docs.jsonl").write_text(docs)
        (work / "bench.yaml").write_text(yaml.safe_dump(config(n)))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "bench.yaml",
                               "--replace-workflow-config", target], cwd=work, capture_output=True, text=True,
                              env={**__import__("os").environ, "PYTHONPATH": str(work)})
        secs = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"shards={n} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        manifest = json.loads((work / target).read_text())
        jobs = proc.stderr.count("Finished jobid") or proc.stdout.count("Finished jobid")
        out[n] = {"seconds": secs, "kb_id": manifest["kb_id"], "files": manifest["files"], "jobs": jobs}
    one, many = out[1], out[args.shards]
    print(f"\nSharded KB build: {args.documents:,} documents, hybrid KB (MiniLM fp32 + BM25), snakemake --cores 2, "
          "cold embedding caches")
    print(f"{'':<34}{'1 shard':>12}{f'{args.shards} shards':>12}{'target':>14}")
    print(f"{'jobs':<34}{one['jobs']:>12}{many['jobs']:>12}")
    print(f"{'wall time (s)':<34}{one['seconds']:>12.1f}{many['seconds']:>12.1f}")
    print(f"{'ratio':<34}{'':>12}{many['seconds'] / one['seconds']:>11.2f}x{'<= 1.20x':>14}")
    print(f"{'same kb_id':<34}{'':>12}{str(one['kb_id'] == many['kb_id']):>12}{'True':>14}")
    print(f"{'same files (sha256 of each)':<34}{'':>12}{str(one['files'] == many['files']):>12}{'True':>14}")
    return out


if __name__ == "__main__":
    main()
