"""Fixtures for workflow tests (helpers live in wfhelpers.py)."""
import pytest

from wfhelpers import TINY, copy_workflow, snakemake


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The tiny config run end to end once, in its own copy (slow: a few minutes on 2 CPU cores)."""
    work = copy_workflow(tmp_path_factory.mktemp("tiny_run"))
    proc = snakemake(work, "--cores", "all", "--configfile", TINY, "--replace-workflow-config")
    return work, proc
