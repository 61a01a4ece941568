"""nanochat.cli: flag spellings, booleans, literal config files; and every configs/*.py against its script."""
import importlib
import re
from pathlib import Path

import pytest

from nanochat.cli import ArgumentParser, read_config_file, str2bool

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.py"))


def make_parser():
    p = ArgumentParser(description="test")
    p.add_argument("--top_k", type=int, default=5, help="documents")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    p.add_argument("--knowledge_base", required=True, help="KB")
    p.add_argument("--retriever_type", default="simple", choices=["simple", "bm25", "dense", "hybrid"])
    p.add_argument("--depth", "--n_layer", dest="depth", type=int, default=4)
    p.add_argument("--extra_text", nargs="*", default=[])
    p.add_bool("--use_rewards", default=True, help="rewards")
    return p


def write(tmp_path, text, name="cfg.py"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("argv", [["--top_k", "7"], ["--top-k", "7"], ["--top_k=7"], ["--top-k=7"]])
def test_dash_and_underscore_spellings(argv):
    args = make_parser().parse_args(["--knowledge_base", "kb"] + argv)
    assert args.top_k == 7 and args.knowledge_base == "kb"
    assert make_parser().parse_args(["--knowledge-base=kb", "--n-layer", "9"]).depth == 9


@pytest.mark.parametrize("argv,expected", [([], True), (["--use_rewards"], True), (["--use_rewards", "false"], False),
                                           (["--use-rewards=no"], False), (["--use_rewards", "TRUE"], True),
                                           (["--use_rewards=0"], False)])
def test_booleans(argv, expected):
    assert make_parser().parse_args(["--knowledge_base", "kb"] + argv).use_rewards is expected


def test_bad_boolean_and_type_errors(capsys):
    with pytest.raises(SystemExit):
        make_parser().parse_args(["--knowledge_base", "kb", "--use_rewards", "maybe"])
    assert "expected true/false, got 'maybe'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_parser().parse_args(["--knowledge_base", "kb", "--top_k", "five"])
    assert str2bool("on") is True and str2bool(False) is False


def test_config_file_literals_and_override(tmp_path):
    cfg = write(tmp_path, '"""docstring is fine"""\n# comment\nknowledge_base = "data/kb"\ntop_k = 3\nlr = 0.01\n'
                          'use_rewards = False\nn_layer = 20\nextra_text = ["a.txt", "b.txt"]\n'
                          'retriever_type = "dense"\n')
    args = make_parser().parse_args([cfg])  # --knowledge_base is required, but the file provides it
    assert (args.knowledge_base, args.top_k, args.lr, args.use_rewards, args.depth) == ("data/kb", 3, 0.01, False, 20)
    assert args.extra_text == ["a.txt", "b.txt"] and args.retriever_type == "dense" and args.config_files == [cfg]
    args = make_parser().parse_args([cfg, "--top_k", "8", "--use-rewards=true"])  # flags after the file win
    assert args.top_k == 8 and args.use_rewards is True
    # two files: the later one wins
    cfg2 = write(tmp_path, "top_k = 11\n", "cfg2.py")
    assert make_parser().parse_args([cfg, cfg2]).top_k == 11
    assert read_config_file(cfg)["extra_text"] == ["a.txt", "b.txt"]


@pytest.mark.parametrize("text,message", [
    ("top_kk = 3\n", "unknown config key(s): top_kk"),
    ("help = 1\n", "unknown config key(s): help"),
    ("import os\n", "only `name = literal` assignments"),
    ("top_k = 2 * 3\n", "top_k: value is not a literal"),
    ("top_k = os.getcwd()\n", "top_k: value is not a literal"),
    ("a = b = 1\n", "only `name = literal` assignments"),
    ("top_k = 'five'\n", "top_k = 'five': not a valid int"),
    ("top_k = 2.5\n", "top_k = 2.5: not a valid int"),
    ("top_k = True\n", "not a valid int"),
    ("use_rewards = 'maybe'\n", "use_rewards = 'maybe'"),
    ("retriever_type = 'tfidf'\n", "must be one of simple, bm25, dense, hybrid"),
    ("top_k = (\n", "not valid Python"),
])
def test_config_file_errors(tmp_path, capsys, text, message):
    cfg = write(tmp_path, text)
    with pytest.raises(SystemExit) as e:
        make_parser().parse_args([cfg, "--knowledge_base", "kb"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    if "literal" in message or "Python" in message:
        assert f"{cfg}:1:" in err  # file and line named


def test_missing_config_file(tmp_path, capsys):
    with pytest.raises(SystemExit):
        make_parser().parse_args([str(tmp_path / "nope.py"), "--knowledge_base", "kb"])
    assert "config file not found" in capsys.readouterr().err


def test_required_flag_still_required_without_config(capsys):
    with pytest.raises(SystemExit):
        make_parser().parse_args(["--top_k", "3"])
    assert "--knowledge_base" in capsys.readouterr().err


# -----------------------------------------------------------------------------
# the shipped configs: literal, commented with their reader, and accepted by that script's parser

def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"rag_hybrid_d20.py", "refrag_hybrid_d20.py", "rag_tiny_cpu.py", "refrag_tiny_cpu.py"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_accepted_by_its_script(path, capsys):
    first = path.read_text().splitlines()[0]
    m = re.match(r"# Read by: .*-m (scripts\.\w+) configs/" + re.escape(path.name), first)
    assert m, f"{path.name}: first line must say which script reads it, got {first!r}"
    values = read_config_file(path)
    assert values
    if "block_pattern" in values:
        letters = values["block_pattern"].split(",")
        assert "M" in letters and len(letters) == values["depth"]
    if "top_k" in values and "max_doc_length" in values:  # documents leave room for question and answer
        assert values["top_k"] * values["max_doc_length"] <= 0.8 * values["max_seq_len"]
    try:
        module = importlib.import_module(m.group(1))
    except ModuleNotFoundError as e:
        if e.name != m.group(1):
            raise
        pytest.skip(f"{m.group(1)} not written yet")
    with pytest.raises(SystemExit) as e:  # --help exits 0 only after the config keys were accepted
        module.main([str(path), "--help"])
    assert e.value.code == 0, capsys.readouterr().err
