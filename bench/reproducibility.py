"""Is the whole DAG reproducible? Run it twice from scratch, in two folders, under two PYTHONHASHSEEDs; compare.

    python -m bench.reproducibility --configfile tests/workflow/config_tiny.yaml --work /tmp/repro_tiny
    python -m bench.reproducibility --work /tmp/repro_default        # the default config (~8 min a run here)
    python -m bench.reproducibility --compare A B                     # two finished folders only

Each folder gets this checkout's tracked and not-ignored files (what a fresh clone plus local edits holds) and
runs `snakemake --cores all` with its own PYTHONHASHSEED. Every file under results/ is compared byte for byte
and reported by stage (KB, precomputed retrieval, dataset shards, tokenizer, checkpoints, metrics, ...). For a
JSON or CSV file that differs, the differing fields or columns are named. Differences listed in
EXPECTED_DIFFERENCES are the documented exceptions (docs/REPRODUCIBILITY.md): wall-clock measurements. Anything
else that differs makes the run fail (exit 1), and so does a stage whose files are missing.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (1, 2)

# path pattern -> stage (first match wins); every file under results/ falls into one of them
STAGES = [
    ("results/synthetic/*", "synthetic documents and queries"),
    ("results/kb/*/documents.jsonl", "validated documents"),
    ("results/kb/*/rejected.jsonl", "validated documents"),
    ("results/kb/*", "knowledge bases"),
    ("results/runs/*/retrieval.parquet*", "precomputed retrieval"),
    ("results/runs/*/retrieval_blocks/*", "precomputed retrieval"),
    ("results/embedding_cache/*", "embedding cache"),
    ("results/runs/*/leakage.json", "leakage check"),
    ("results/runs/*/dataset/*", "dataset shards"),
    ("results/models/*/tokenizer/*", "tokenizer"),
    ("results/checkpoints/*", "checkpoints and training logs"),
    ("results/models/*", "checkpoints and training logs"),
    ("results/runs/*/eval/*", "metrics"),
    ("results/report/*", "report"),
    ("results/*", "other"),
]

# The documented exceptions: (path pattern, field or column, why). A field is a dotted JSON path or a CSV
# column; "*" means the whole file (compared for existence only).
EXPECTED_DIFFERENCES = [
    ("results/checkpoints/*/metrics.csv", "tokens_per_s", "training throughput (wall clock)"),
    ("results/checkpoints/*/metrics.csv", "elapsed_s", "training time (wall clock)"),
    ("results/checkpoints/*/rewards.csv", "elapsed_s", "training time (wall clock)"),
    ("results/checkpoints/*/done.json", "elapsed_s", "training time (wall clock)"),
    ("results/runs/*/eval/metrics.json", "generation_seconds.*", "generation time (wall clock)"),
    ("results/runs/*/retrieval.parquet.meta.json", "seconds.*", "retrieval time (wall clock)"),
    ("results/runs/*/retrieval.parquet.meta.json", "queries_per_second", "retrieval speed (wall clock)"),
    ("results/report/metrics.csv", "generation_seconds.*", "generation time (wall clock)"),
    ("results/checkpoints/refrag_checkpoints/*/workflow_fingerprint.json", "fingerprint",
     "resume stamp: hashes the rag run's done.json, whose elapsed_s is wall clock"),
]


def stage_of(rel: str) -> str:
    return next(name for pattern, name in STAGES if fnmatch.fnmatch(rel, pattern))


def expected(rel: str, field: str) -> str | None:
    """The documented reason a file's field may differ, or None."""
    for pattern, f, why in EXPECTED_DIFFERENCES:
        if fnmatch.fnmatch(rel, pattern) and (f == "*" or fnmatch.fnmatchcase(field, f)):
            return why
    return None


# -----------------------------------------------------------------------------
# Running

def copy_checkout(dest: Path) -> Path:
    """Tracked and untracked-but-not-ignored files of this checkout (no results/, .snakemake/, caches)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    dest.mkdir(parents=True, exist_ok=True)
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def run_dag(folder: Path, seed: int, configfile: str | None, timeout: int) -> float:
    """snakemake --cores all in folder with PYTHONHASHSEED=seed; returns seconds; raises on failure."""
    args = [sys.executable, "-m", "snakemake", "--cores", "all"]
    if configfile:
        args += ["--configfile", configfile, "--replace-workflow-config"]
    env = {**os.environ, "PYTHONHASHSEED": str(seed)}
    env.pop("PYTHONPATH", None)  # jobs import the folder's own nanochat/ (common.smk puts it first)
    t0 = time.time()
    proc = subprocess.run(args, cwd=folder, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout)
    (folder / "snakemake.log").write_text(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake failed in {folder} (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
    return time.time() - t0


# -----------------------------------------------------------------------------
# Comparing

def _flatten(obj, prefix="") -> dict:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    if isinstance(obj, list) and obj and all(isinstance(v, (dict, list)) for v in obj):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): obj}


def differing_fields(rel: str, a: bytes, b: bytes) -> list[str] | None:
    """Which JSON fields / CSV columns differ; None when the file is neither (or unparsable)."""
    try:
        if rel.endswith(".json"):
            fa, fb = _flatten(json.loads(a)), _flatten(json.loads(b))
            same = lambda k: k in fa and k in fb and json.dumps(fa[k]) == json.dumps(fb[k])  # NaN == NaN here
            return sorted(k for k in fa.keys() | fb.keys() if not same(k))
        if rel.endswith(".csv"):
            ra, rb = list(csv.DictReader(io.StringIO(a.decode()))), list(csv.DictReader(io.StringIO(b.decode())))
            cols = sorted({c for r in ra + rb for c in r})
            if len(ra) != len(rb):
                return ["<row count>"] + cols
            return [c for c in cols if any(x.get(c) != y.get(c) for x, y in zip(ra, rb))]
    except (ValueError, UnicodeDecodeError):
        return None
    return None


def compare(a: Path, b: Path, subdir: str = "results") -> dict:
    """Every file under a/subdir vs b/subdir -> {"files": [...], "stages": {stage: counts}, "unexpected": [...]}."""
    def listing(root):
        base = root / subdir
        return {p.relative_to(root).as_posix() for p in base.rglob("*") if p.is_file()} if base.is_dir() else set()

    la, lb = listing(a), listing(b)
    files, unexpected, stages = [], [], {}
    for rel in sorted(la | lb):
        stage = stage_of(rel)
        counts = stages.setdefault(stage, {"files": 0, "identical": 0, "expected": 0, "unexpected": 0})
        counts["files"] += 1
        if rel not in la or rel not in lb:
            row = {"path": rel, "stage": stage, "status": f"only in {'B' if rel in lb else 'A'}"}
            why = expected(rel, "*")
        else:
            da, db = (a / rel).read_bytes(), (b / rel).read_bytes()
            if da == db:
                counts["identical"] += 1
                continue
            fields = differing_fields(rel, da, db)
            reasons = [expected(rel, f) for f in (fields or ["*"])]
            why = "; ".join(sorted(set(reasons))) if fields != [] and all(reasons) else None
            row = {"path": rel, "stage": stage, "status": "differs", "fields": fields}
        row["expected"] = why
        files.append(row)
        counts["expected" if why else "unexpected"] += 1
        if not why:
            unexpected.append(row)
    return {"a": str(a), "b": str(b), "stages": stages, "files": files, "unexpected": unexpected}


def print_report(result: dict) -> None:
    print(f"A = {result['a']}\nB = {result['b']}")
    print(f"{'stage':42s} {'files':>6s} {'identical':>9s} {'expected':>8s} {'unexpected':>10s}")
    for stage, c in result["stages"].items():
        print(f"{stage:42s} {c['files']:6d} {c['identical']:9d} {c['expected']:8d} {c['unexpected']:10d}")
    for row in result["files"]:
        fields = row.get("fields")
        what = f" fields: {', '.join(fields)}" if fields else ""
        print(f"  {'EXPECTED ' if row['expected'] else 'UNEXPECTED'} {row['status']}: {row['path']}{what}"
              + (f"  ({row['expected']})" if row["expected"] else ""))
    n = sum(c["files"] for c in result["stages"].values())
    same = sum(c["identical"] for c in result["stages"].values())
    print(f"{same}/{n} files byte-identical; {len(result['unexpected'])} unexpected difference(s)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", help="folder for the two runs (A and B are made inside; must not exist)")
    p.add_argument("--configfile", default=None, help="config to run (default: config/config.yaml)")
    p.add_argument("--seeds", type=int, nargs=2, default=SEEDS, help="PYTHONHASHSEED of run A and run B")
    p.add_argument("--timeout", type=int, default=3600, help="seconds allowed per run")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="only compare two finished folders")
    p.add_argument("--json", help="write the comparison here as JSON")
    args = p.parse_args(argv)
    if args.compare:
        a, b = map(Path, args.compare)
    else:
        if not args.work:
            p.error("--work is required (or --compare A B)")
        work = Path(args.work)
        if work.exists():
            p.error(f"{work} exists: the runs start from scratch in new folders")
        a, b = copy_checkout(work / "A"), copy_checkout(work / "B")
        for folder, seed in ((a, args.seeds[0]), (b, args.seeds[1])):
            print(f"running the DAG in {folder} with PYTHONHASHSEED={seed} ...", flush=True)
            print(f"  done in {run_dag(folder, seed, args.configfile, args.timeout):.0f} s", flush=True)
    result = compare(a, b)
    print_report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 1 if result["unexpected"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
