"""The library's layout contracts: old module paths keep working, every list of choices has one source,
and shared input/output rules (JSONL, --output) hold for every entry point."""
import gzip
import json
import runpy
import sys

import pytest

from nanochat._moved import MOVED
from nanochat.cli import ArgumentParser, output_dir, output_file
from nanochat.data.jsonl import JsonlError, jsonl_lines, read_jsonl


@pytest.mark.parametrize("old,new", sorted(MOVED.items()))
def test_old_module_paths_import_the_same_module(old, new):
    import importlib
    assert importlib.import_module(old) is importlib.import_module(new)


def _has_cli(module: str) -> bool:
    import importlib.util
    return 'if __name__ == "__main__"' in open(importlib.util.find_spec(module).origin, encoding="utf-8").read()


@pytest.mark.parametrize("old", [o for o, new in sorted(MOVED.items()) if _has_cli(new)])
def test_old_cli_paths_still_run(old, monkeypatch, capsys):
    """`python -m nanochat.<old>` resolves to the moved module's code (the README's CLIs keep working)."""
    monkeypatch.delitem(sys.modules, old, raising=False)  # as in a fresh `python -m`
    monkeypatch.setattr(sys, "argv", [old, "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module(old, run_name="__main__", alter_sys=True)
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_jsonl_reader_accepts_bom_and_gzip_and_names_file_line_field(tmp_path):
    plain = tmp_path / "a.jsonl"
    plain.write_bytes(b"\xef\xbb\xbf" + b'{"id": 1}\n\n{"id": 2}\n')  # spreadsheet / Windows tools write a BOM
    assert [obj for _, obj in read_jsonl(plain)] == [{"id": 1}, {"id": 2}]
    packed = tmp_path / "a.jsonl.gz"
    packed.write_bytes(gzip.compress(b'{"id": 3}\n'))
    assert [obj for _, obj in read_jsonl(packed)] == [{"id": 3}]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": 1}\n{nope\n[1, 2]\n\xff\xfe\n')
    problems = [line.problem for line in jsonl_lines(bad)]
    assert problems[0] is None
    assert problems[1] == f"{bad}:2: json: invalid JSON (Expecting property name enclosed in double quotes at column 2)"
    assert problems[2] is None  # parsed; whether a list is acceptable is the caller's business
    assert problems[3] == f"{bad}:4: line: invalid UTF-8 at byte 0"
    with pytest.raises(JsonlError, match=r"bad\.jsonl:2: json: invalid JSON"):
        list(read_jsonl(bad))
    (tmp_path / "list.jsonl").write_text("[1]\n")
    with pytest.raises(JsonlError, match=r"list\.jsonl:1: record: expected a JSON object, got list"):
        list(read_jsonl(tmp_path / "list.jsonl"))


def test_documents_and_queries_with_a_bom_load(tmp_path):
    from nanochat.data.documents import load_documents
    from nanochat.data.queries import load_queries
    docs = tmp_path / "docs.jsonl"
    docs.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "d1", "title": "T", "content": "text one"}).encode() + b"\n")
    assert [d["id"] for d in load_documents(docs)] == ["d1"]
    q = tmp_path / "q.jsonl"
    q.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "q1", "question": "why?", "answers": ["x"]}).encode() + b"\n")
    assert [r["id"] for r in load_queries(q)] == ["q1"]


def test_output_paths_fail_in_one_line_naming_them(tmp_path, capsys):
    existing = tmp_path / "existing"
    existing.write_text("x")
    p = ArgumentParser(prog="prog")
    p.add_argument("--output", type=output_dir)
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--output", str(existing)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err == f"prog: error: argument --output: {existing} exists and is a file, not a directory (see --help)\n"
    q = ArgumentParser(prog="prog")
    q.add_argument("--output", type=output_file)
    with pytest.raises(SystemExit):
        q.parse_args(["--output", str(existing / "below.json")])
    assert f"{existing / 'below.json'} cannot be created: {existing} is a file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        q.parse_args(["--output", str(tmp_path)])
    assert "is a directory, not a file" in capsys.readouterr().err
    assert q.parse_args(["--output", str(tmp_path / "new" / "m.json")]).output.endswith("m.json")


def test_the_guide_cli_refuses_a_file_as_kb_directory(tmp_path):
    import subprocess
    (tmp_path / "kb").write_text("not a directory")
    (tmp_path / "d.jsonl").write_text('{"id": "a", "content": "alpha"}\n')
    r = subprocess.run([sys.executable, "-m", "nanochat.retrieval", "--documents", str(tmp_path / "d.jsonl"),
                        "--output", str(tmp_path / "kb"), "--type", "simple"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"python -m nanochat.retrieval: error: argument --output: {tmp_path / 'kb'} "
                                             "exists and is a file, not a directory (see --help)"]


def test_choices_come_from_the_registries():
    from nanochat.retrieval import precompute
    from nanochat.retrieval.hop_strategies import ALIASES, NEEDS_MODEL, STRATEGIES
    from nanochat.retrieval.registry import RETRIEVERS
    parser = precompute.build_parser()
    choices = {a.dest: a.choices for a in parser._actions if a.choices}
    assert list(choices["retriever_type"]) == list(RETRIEVERS)
    assert set(choices["strategy"]) == (set(STRATEGIES) - NEEDS_MODEL) | set(ALIASES)
    assert "focused" in choices["strategy"]  # the default run's own strategy


def test_every_hop_strategy_forms_a_query():
    from nanochat.retrieval.hop_strategies import STRATEGIES, next_hop_query
    docs = [{"title": "Acme Labs", "content": "Acme Labs was founded by Vora Delm in Oslo."}]
    for name in STRATEGIES:
        query = next_hop_query("Who founded Acme Labs?", docs, name, query_fn=lambda q, d: f"{q} founder")
        assert query.startswith("Who founded Acme Labs?") and len(query) > len("Who founded Acme Labs?"), name


def test_sources_registry_converts_a_beir_folder(tmp_path):
    from nanochat.data.queries import load_queries
    from nanochat.data.sources.registry import SOURCES, get_converter
    assert set(SOURCES) == {"beir", "squad", "hotpotqa"}
    src = tmp_path / "beir"
    (src / "qrels").mkdir(parents=True)
    (src / "corpus.jsonl").write_text('{"_id": "d1", "title": "A", "text": "alpha"}\n{"_id": "d2", "title": "B", "text": "beta"}\n')
    (src / "queries.jsonl").write_text('{"_id": "q1", "text": "what is alpha"}\n{"_id": "q2", "text": "what is beta"}\n')
    (src / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t0\n")
    manifest = get_converter("beir")(src, tmp_path / "out")
    assert manifest["documents"] == 2
    rows = load_queries(tmp_path / "out" / "queries_val.jsonl")  # dev -> val; relevance 0 is not gold
    assert [(r["id"], r["doc_ids"]) for r in rows] == [("q1", ["d1"])]


MAX_MODULE_LINES = 500  # DEVGUIDE: small modules, one job each; split a module that outgrows this


def test_no_library_module_exceeds_500_lines():
    from pathlib import Path

    import nanochat
    root = Path(nanochat.__file__).parent
    sizes = {p.relative_to(root.parent).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
             for p in sorted(root.rglob("*.py"))}
    assert len(sizes) > 50 and "nanochat/mamba/__init__.py" in sizes  # the walk really saw the package tree
    too_long = {path: n for path, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines (split them by job): {too_long}"
