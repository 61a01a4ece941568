"""Fixtures for workflow tests (helpers live in wfhelpers.py)."""
import os

import pytest

from wfhelpers import TINY, copy_workflow, snakemake


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny config run end to end once, in its own copy (slow: a few minutes on 2 CPU cores)."""
    work = copy_workflow(tmp_path_factory.mktemp("tiny_run"))
    proc = snakemake(work, "--cores", "all", "--configfile", TINY, "--replace-workflow-config")
    return work, proc


@pytest.fixture(scope="session", autouse=True)
def shared_plan_cache(tmp_path_factory):
    """One planning memo (nanochat/pipeline/plan_cache.py) for every workflow copy of the session: copies keep the
    checkout's mtimes, so they share its fingerprint and plan without re-importing torch or re-parsing modules."""
    os.environ["NANOCHAT_PLAN_CACHE"] = str(tmp_path_factory.mktemp("plan_cache") / "plan_cache.json")
    yield
    os.environ.pop("NANOCHAT_PLAN_CACHE", None)
