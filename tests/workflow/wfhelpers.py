"""Helpers for workflow tests: a throw-away copy of the workflow, and Snakemake runs in it.

(A plain module, not conftest.py: tests/conftest.py already owns that module name.)
"""
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COPY = ["Snakefile", "rules", "workflow", "config", "envs", "profiles", "nanochat", "scripts", "configs", "dvc.yaml",
        "tests/workflow"]
TINY = "tests/workflow/config_tiny.yaml"


def copy_workflow(dest: Path) -> Path:
    """The workflow and library without results/, .snakemake/ or git metadata."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "results", ".snakemake", "logs", "benchmarks")
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        elif src.exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def snakemake(cwd, *args, check=True, timeout=900):
    """Run the snakemake CLI in cwd; return the CompletedProcess (stdout+stderr merged).

    On a timeout the whole run (its own process group: Snakemake and its jobs) is killed and Snakemake's directory
    lock removed with --unlock, so that no stale lock is left for the next test in the same copy.
    """
    cmd = [sys.executable, "-m", "snakemake", *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_and_unlock(cwd, proc)
        raise
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(map(str, args))} failed ({proc.returncode}):\n{out[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out)


def kill_and_unlock(cwd, proc: subprocess.Popen) -> None:
    """SIGKILL a Snakemake run started in its own session (start_new_session=True), then `snakemake --unlock`:
    what the README tells a user to do after a hard kill."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()
    subprocess.run([sys.executable, "-m", "snakemake", "--unlock"], cwd=cwd, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)


def planned_jobs(output: str) -> dict:
    """{rule: count} from a dry run's 'Job stats' table (empty when there is nothing to do)."""
    stats = output.split("Job stats:")
    if len(stats) < 2:
        return {}
    jobs = {}
    for line in stats[1].splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        if m.group(1) != "total":
            jobs[m.group(1)] = int(m.group(2))
    return jobs


def dry_run(cwd, *args) -> dict:
    return planned_jobs(snakemake(cwd, "-n", "--quiet", "rules", *args).stdout)
