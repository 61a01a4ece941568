"""Snakemake's own overhead at scale: plan a 4 KBs x 4 shards x 3 runs DAG, run it, re-run it with nothing to do.

    python -m bench.dag_overhead                         # tests/workflow/config_scale.yaml (156 jobs)
    python -m bench.dag_overhead --skip_run              # planning only

Targets: `snakemake -n` <= 5 s; a no-op re-run <= 10 s. Each is timed `--repeats` times (median) in a copy of the
workflow. Planning reuses what it derived from the source (nanochat/pipeline/plan_cache.py) until the source changes,
so the first plan after an edit ("cold") is timed on its own, each time with an empty memo; the other rows are
timed with the memo filled. They are timed in three SLURM situations, because snakemake-executor-plugin-slurm (installed with the project) runs
`sacct`/`scontrol show config` when Snakemake loads its plugins, on every start, with or without the profile:
  controller up     the SLURM client tools answer at once (a cluster's login node, or CI after .ci/slurm_setup.sh)
  no controller     tools installed but no controller reachable (SLURM_CONF points at a closed port): the plugin
                    waits for its 10 s subprocess timeout
  plugin wait cut   scontrol/sacct replaced by stubs that fail at once: Snakemake's own time
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "workflow"))
from wfhelpers import copy_workflow  # noqa: E402 (the tests' copy of the workflow: no results/, no .snakemake/)

CONFIG = "tests/workflow/config_scale.yaml"


def situations(tmp: Path) -> dict:
    """Environment per SLURM situation."""
    stub = tmp / "stub_bin"
    stub.mkdir(exist_ok=True)
    for tool in ("scontrol", "sacct"):
        (stub / tool).write_text("#!/bin/sh\nexit 1\n")
        (stub / tool).chmod(0o755)
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    closed = tmp / "slurm_closed.conf"
    if conf.is_file():
        text = [line for line in conf.read_text().splitlines() if not line.startswith("SlurmctldPort")]
        closed.write_text("\n".join(text + ["SlurmctldPort=6999"]) + "\n")
    base = dict(os.environ)
    envs = {"plugin wait cut": {**base, "PATH": f"{stub}:{base['PATH']}"}}
    if shutil.which("scontrol"):
        up = subprocess.run(["scontrol", "ping"], capture_output=True, text=True).stdout
        if "UP" in up:
            envs["controller up"] = base
        if closed.is_file():
            envs["no controller"] = {**base, "SLURM_CONF": str(closed)}
    return envs


def timed(cmd, cwd, env, repeats) -> tuple[float, str]:
    times, out = [], ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        out = proc.stdout + proc.stderr
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return statistics.median(times), out


def main(argv=None):
    from nanochat.cli import ArgumentParser
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configfile", default=CONFIG)
    p.add_argument("--work", default=None, help="workflow copy (default: a temp dir)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cores", default="2")
    p.add_bool("--skip_run", default=False, help="time planning only")
    args = p.parse_args(argv)
    tmp = Path(args.work or tempfile.mkdtemp(prefix="dag_overhead."))
    work = copy_workflow(tmp / "wf") if not (tmp / "wf" / "Snakefile").is_file() else tmp / "wf"
    envs = situations(tmp)
    env0 = {**envs["plugin wait cut"], "PYTHONPATH": str(work)}
    sm = [sys.executable, "-m", "snakemake", "--configfile", args.configfile, "--replace-workflow-config"]
    memo = tmp / "plan_cache.json"
    cold = []
    for i in range(args.repeats):  # an empty memo each time: the first plan after an edit of the source
        cold.append(timed([*sm, "-n"], work, {**env0, "NANOCHAT_PLAN_CACHE": str(tmp / f"cold{i}.json")}, 1)[0])
    envs = {name: {**env, "PYTHONPATH": str(work), "NANOCHAT_PLAN_CACHE": str(memo)} for name, env in envs.items()}
    timed([*sm, "-n"], work, envs["plugin wait cut"], 1)  # fills the memo
    plan = {"cold (after an edit)": (statistics.median(cold), "")}
    plan |= {name: timed([*sm, "-n"], work, env, args.repeats) for name, env in envs.items()}
    jobs = next(line for line in plan["plugin wait cut"][1].splitlines() if line.startswith("total")).split()[-1]
    noop = {}
    run_s = None
    if not args.skip_run:
        t0 = time.perf_counter()
        proc = subprocess.run([*sm, "--cores", args.cores], cwd=work, env=env0, capture_output=True, text=True)
        run_s = time.perf_counter() - t0
        if proc.returncode:
            raise SystemExit(f"the DAG failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
        for name, env in envs.items():
            secs, out = timed([*sm, "--cores", args.cores], work, env, args.repeats)
            if "Nothing to be done" not in out:
                raise SystemExit(f"the re-run was not a no-op:\n{out[-3000:]}")
            noop[name] = secs
    print(f"\nDAG overhead: {args.configfile} ({jobs} jobs: 4 KBs x 4 shards x 3 runs), median of {args.repeats}, "
          f"2 shared CPU cores")
    print(f"{'situation':<18}{'snakemake -n':>14}{'no-op re-run':>14}{'targets':>22}")
    for name in plan:
        nop = f"{noop[name]:.1f}s" if name in noop else "-"
        print(f"{name:<18}{plan[name][0]:>13.1f}s{nop:>14}{'<= 5 s / <= 10 s':>22}")
    if run_s is not None:
        print(f"(the whole DAG ran once in {run_s:.0f}s with --cores {args.cores})")
    return {"plan": {k: v[0] for k, v in plan.items()}, "noop": noop, "run_s": run_s, "jobs": jobs}


if __name__ == "__main__":
    main()
