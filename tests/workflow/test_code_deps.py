"""A rule's code inputs are the import closure of its entry points (nanochat/pipeline/code_deps.py).

    python -m pytest -q tests/workflow/test_code_deps.py
"""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nanochat.pipeline import code_deps
from nanochat.pipeline import config as wf_config
from nanochat.pipeline.code_deps import CodeGraph, UnknownModuleError, code_of
from nanochat.pipeline.plan_cache import PlanCache, source_fingerprint
from wfhelpers import ROOT, TINY, copy_workflow, dry_run, snakemake


def write(root: Path, files: dict) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


TREE = {
    "nanochat/__init__.py": "from nanochat import _moved\n",
    "nanochat/_moved.py": 'MOVED = {"nanochat.old": "nanochat.sub.new", "nanochat.never": "nanochat.sub.lazy"}\n',
    "nanochat/sub/__init__.py": "from nanochat.sub.new import VALUE\n",
    "nanochat/sub/new.py": "VALUE = 1\n\ndef later():\n    from . import helper\n    return helper\n",
    "nanochat/sub/helper.py": "import os\nfrom ..tools import metrics as M\n",
    "nanochat/tools/metrics.py": "import numpy\n",  # a namespace package: no __init__.py
    "nanochat/sub/lazy.py": "",
    "nanochat/registry.py": 'TABLE = {"x": "nanochat.sub.lazy", "doc": "see nanochat.sub.lazy for details"}\n',
    "nanochat/unrelated.py": "import nanochat.sub\n",
    "nanochat/cli/__init__.py": "",
    "nanochat/cli/__main__.py": "from nanochat.registry import TABLE\n",
    "scripts/__init__.py": "",
    "scripts/run.py": "import sys\nfrom nanochat.old import later\nfrom nanochat import old\n",
    "workflow/wrapper.py": 'from nanochat.sub import VALUE\ncall_main(None, "scripts.run", [])\n',
}


def rel(root, files):
    return sorted(str(Path(f).relative_to(root)) for f in files)


def test_closure_follows_function_relative_alias_and_string_imports(tmp_path):
    root = write(tmp_path, TREE)
    graph = CodeGraph(root)
    # scripts.run -> nanochat.old (alias of nanochat.sub.new, parents' __init__ first) -> helper (relative, inside a
    # function) -> nanochat/tools/metrics.py (namespace package); stdlib and third-party imports are not followed
    assert rel(root, graph.closure("scripts.run")) == [
        "nanochat/__init__.py", "nanochat/_moved.py", "nanochat/sub/__init__.py", "nanochat/sub/helper.py",
        "nanochat/sub/new.py", "nanochat/tools/metrics.py", "scripts/__init__.py", "scripts/run.py"]
    # a wrapper script: its call_main("scripts.run") string is followed; the alias table's strings are not
    wrapper = rel(root, graph.closure("workflow/wrapper.py"))
    assert "scripts/run.py" in wrapper and "workflow/wrapper.py" in wrapper and "nanochat/sub/lazy.py" not in wrapper
    # python -m a package runs its __main__.py; a registry's module-name string is a (lazy) import, prose is not
    assert rel(root, graph.closure("nanochat.cli")) == [
        "nanochat/__init__.py", "nanochat/_moved.py", "nanochat/cli/__init__.py", "nanochat/cli/__main__.py",
        "nanochat/registry.py", "nanochat/sub/__init__.py", "nanochat/sub/helper.py", "nanochat/sub/lazy.py",
        "nanochat/sub/new.py", "nanochat/tools/metrics.py"]


@pytest.mark.parametrize("source, message", [
    ("import nanochat.missing\n", r"mod\.py:1: no module named 'nanochat.missing'"),
    ("def f():\n    from nanochat.sub import nothing\n", r"mod\.py:2: 'nanochat.sub' has no submodule or name 'nothing'"),
    ("from nanochat.tools import nothing\n", r"mod\.py:1: 'nanochat.tools' has no submodule or name 'nothing'"),
    ("from .missing import x\n", r"mod\.py:1: no module named 'nanochat.missing'"),
    ('"nanochat.sub.new"\nimport scripts.gone\n', r"mod\.py:2: no module named 'scripts.gone'"),
])
def test_unknown_module_is_an_error(tmp_path, source, message):
    root = write(tmp_path, {**TREE, "nanochat/mod.py": source})
    with pytest.raises(UnknownModuleError, match=message):
        CodeGraph(root).closure("nanochat.mod")


def test_unknown_entry_is_an_error(tmp_path):
    root = write(tmp_path, TREE)
    graph = CodeGraph(root)
    with pytest.raises(UnknownModuleError, match=r"no module named 'nanochat\.nope'"):
        graph.closure("nanochat.nope")
    with pytest.raises(UnknownModuleError, match=r"no file workflow/nope\.py"):
        graph.closure("workflow/nope.py")
    with pytest.raises(UnknownModuleError, match=r"package 'nanochat\.sub' has no __main__\.py"):
        graph.closure("nanochat.sub")
    with pytest.raises(UnknownModuleError, match="not a module of this repo"):
        graph.closure("numpy")
    # names imported from plain modules are attributes (their own tests catch a wrong one): no error
    write(root, {"nanochat/mod.py": "from nanochat.sub.new import anything\n"})
    assert "nanochat/sub/new.py" in rel(root, CodeGraph(root).closure("nanochat.mod"))


def test_repo_closures(monkeypatch):
    """The known gap: rag_eval's logic lives in nanochat/rag/evaluation.py, which the hand-written list left out."""
    monkeypatch.chdir(ROOT)
    evaluate = code_of(ROOT, "workflow/scripts/evaluate_run.py")
    assert all(not Path(f).is_absolute() for f in evaluate)  # relative to the working directory (ROOT here)
    for f in ("nanochat/rag/evaluation.py", "scripts/rag_eval.py", "nanochat/engine.py", "nanochat/rag/metrics.py"):
        assert f in evaluate, f
    assert not any("hotpotqa" in f for f in evaluate)
    index = code_of(ROOT, "nanochat.retrieval")  # build_index's `python -m nanochat.retrieval`
    for name in ("simple", "bm25", "dense", "hybrid"):  # lazily imported through the registry's strings
        assert any(f.endswith(f"nanochat/retrieval/{name}.py") for f in index), name


def test_plan_cache_keeps_derived_values_until_the_source_changes(tmp_path, monkeypatch):
    """Planning reuses closures and the filled schema from disk (also in a copy that kept its mtimes), and
    derives them afresh after any source edit."""
    monkeypatch.delenv("NANOCHAT_PLAN_CACHE", raising=False)
    root = write(tmp_path / "repo", TREE)
    store = tmp_path / ".snakemake" / "plan_cache.json"
    fresh = lambda r=root: PlanCache(store, source_fingerprint(r))  # noqa: E731 (one planning run each)
    before = code_of(root, "scripts.run", cache=fresh())
    assert before == code_of(root, "scripts.run")

    def never():
        raise AssertionError("derived again although the source did not change")
    with monkeypatch.context() as m:
        m.setattr(code_deps, "_closure", lambda *a: never())
        assert code_of(root, "scripts.run", cache=fresh()) == before
        copy = Path(shutil.copytree(root, tmp_path / "copy"))  # mtimes kept: same fingerprint, paths of the copy
        assert code_of(copy, "scripts.run", cache=fresh(copy)) == [f.replace(str(root), str(copy)) for f in before]
        m.setattr(wf_config, "schema_with_registries", lambda *a: {"type": "object"})
        wf_config.write_schema(tmp_path / "s.json", cache=fresh())
        m.setattr(wf_config, "schema_with_registries", lambda *a: never())
        assert json.loads(Path(wf_config.write_schema(tmp_path / "s.json", cache=fresh())).read_text()) == \
            {"type": "object"}

    # an edit (a new import), a new file and an extra file each change the fingerprint: the closure is recomputed
    prints = [source_fingerprint(root)]
    write(root, {"nanochat/sub/helper.py": TREE["nanochat/sub/helper.py"] + "import nanochat.sub.lazy\n"})
    prints.append(source_fingerprint(root))
    code_deps._closure.cache_clear(), code_deps._graph.cache_clear()  # a new planning process
    assert str(root / "nanochat/sub/lazy.py") in code_of(root, "scripts.run", cache=fresh())
    assert len(json.loads(store.read_text())["entries"]) == 2  # the old source's values are kept beside the new
    write(root, {"workflow/new.py": ""})
    prints.append(source_fingerprint(root))
    prints.append(source_fingerprint(root, [tmp_path / "s.json"]))  # files outside the checkout too
    assert len(set(prints)) == len(prints)
    (root / "workflow/new.py").unlink()
    assert source_fingerprint(root) == prints[1]
    store.write_text("{not json")  # a damaged store is ignored, then rewritten
    assert code_of(root, "scripts.run", cache=fresh()) and json.loads(store.read_text())["entries"]


def job_table(cwd, configfile):
    """nanochat.pipeline.dvc's job table of a workflow copy, in a subprocess (Snakemake changes sys.path)."""
    code = ("import json; from nanochat.pipeline.dvc import snakemake_jobs; "
            f"print(json.dumps(snakemake_jobs(configfile={str(configfile)!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, text=True, capture_output=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_rule_tracks_the_closure_of_what_it_runs(monkeypatch):
    """code= of each rule is the closure of its wrapper script, or of every `-m` module of its shell command."""
    monkeypatch.chdir(ROOT)
    jobs = job_table(ROOT, "tests/workflow/config_multi.yaml")
    rules = {}
    for job in jobs:
        if job["rule"] == "all":
            continue
        entries = [job["script"]] if job["script"] else re.findall(r"-m\s+([\w.]+)", job["shell"] or "")
        assert entries, f"{job['rule']}: neither a script nor a `python -m` module"
        assert job["code"] == code_of(ROOT, *entries), f"{job['rule']}: code= is not the closure of {entries}"
        rules[job["rule"]] = entries
    assert list(dict.fromkeys(rules["rag_finetune"])) == ["nanochat.pipeline.launch", "scripts.rag_finetune"]
    # a training's code is what it runs: editing the dvc.yaml generator must not restart a fine-tune
    assert "nanochat/pipeline/dvc.py" not in code_of(ROOT, *rules["rag_finetune"])
    assert rules["build_index"] == ["nanochat.retrieval"]


@pytest.mark.slow
def test_editing_an_imported_module_reruns_the_rule(tmp_path):
    """Snakemake itself: with every output present and up to date, editing a module a rule imports (even
    transitively) re-runs that rule and what follows; editing a module no rule imports re-runs nothing."""
    work = copy_workflow(tmp_path)
    tiny = ("--configfile", TINY, "--replace-workflow-config")
    for job in job_table(work, TINY):
        for f in job["output"]:
            (work / f).parent.mkdir(parents=True, exist_ok=True)
            (work / f).touch()
    snakemake(work, "--touch", "--cores", "1", *tiny)
    assert dry_run(work, *tiny) == {}

    with open(work / "nanochat/data/sources/hotpotqa.py", "a") as f:  # imported by no rule's entry
        f.write("\n# an unrelated edit\n")
    assert dry_run(work, *tiny) == {}

    with open(work / "nanochat/rag/evaluation.py", "a") as f:  # scripts.rag_eval -> nanochat.rag.evaluation
        f.write("\n# an edit\n")
    jobs = dry_run(work, *tiny)
    assert jobs.get("evaluate_run") == 1 and jobs.get("evaluate_refrag_run") == 1 and jobs.get("report") == 1, jobs
    assert not {"base_train", "build_index", "precompute_retrieval", "build_dataset", "rag_finetune"} & set(jobs), jobs
