"""config/config.yaml and the test configs validate against workflow/schemas/config.schema.yaml; bad ones fail clearly.

    python -m pytest -q tests/test_config.py
"""
import copy
from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from nanochat.pipeline import config as wf_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")


@pytest.fixture(scope="module")
def effective_schema(tmp_path_factory):
    """What the workflow validates against: the schema with its registries' names filled in."""
    return wf_config.write_schema(tmp_path_factory.mktemp("schema") / "config.schema.json")
CONFIGS = ["config/config.yaml", "tests/workflow/config_tiny.yaml", "tests/workflow/config_multi.yaml",
           "tests/workflow/config_upstream.yaml", "tests/workflow/config_scale.yaml"]


def load(rel):
    return yaml.safe_load((ROOT / rel).read_text())


@pytest.mark.parametrize("rel", CONFIGS)
def test_configs_validate_and_get_defaults(rel, effective_schema):
    config = load(rel)
    validate(config, effective_schema)
    wf_config.check_config_references(config)
    run = next(iter(config["runs"].values()))
    assert 0 <= run["train"]["p_gold"] <= 1 and run["evaluate"]["max_new_tokens"] >= 1  # nested defaults filled
    assert set(run) >= {"retriever_type", "top_k", "k_max", "mode", "train", "evaluate"}  # defaults filled
    assert config["leakage"]["max_leak_rate"] >= 0


def test_schema_documents_every_key():
    """Every property: a type (or enum) and a description; every optional leaf: a default."""
    schema = yaml.safe_load(Path(SCHEMA).read_text())

    def walk(node, path):
        while "$ref" in node:  # "#/definitions/x"
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
        for branch in ("then", "else"):  # models: a scratch size or an existing checkpoint
            if branch in node:
                walk(node[branch], f"{path}<{branch}>")
        for key, sub in node.get("properties", {}).items():
            where = f"{path}.{key}"
            assert "description" in sub, f"{where}: no description"
            assert "type" in sub or "enum" in sub or "x-registry" in sub, f"{where}: no type"
            if sub.get("type") not in ("object",) and key not in node.get("required", []):
                assert "default" in sub, f"{where}: optional key without default"
            walk(sub, where)
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], path + ".<name>")
        if node.get("type") == "object" and "if" not in node:
            assert node.get("additionalProperties") is not None, f"{path}: additionalProperties not set"

    walk(schema, "config")


def test_every_config_key_is_commented():
    """The default config reads as documentation: every key line has a comment above or beside it."""
    lines = (ROOT / "config/config.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#") and line.rstrip().endswith(":") is False:
            continue
        if line.strip().endswith(":") and not line.lstrip().startswith("#"):
            depth = len(line) - len(line.lstrip())
            if depth <= 2:  # sections and named entries
                assert any(lines[j].lstrip().startswith("#") for j in range(max(0, i - 3), i)) or "#" in line, \
                    f"config/config.yaml:{i + 1}: '{line.strip()}' has no comment"


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["runs"]["synthetic_rag"].update(topk=3), "Additional properties are not allowed ('topk'"),
    (lambda c: c["runs"]["synthetic_rag"].update(retriever_type="bm42"), "'bm42' is not one of"),
    (lambda c: c["runs"]["synthetic_rag"].update(mode="multihop"), "'multihop' is not one of"),
    (lambda c: c["runs"]["synthetic_refrag"].update(hop_strategy="model"), "'model' is not one of"),  # needs a model
    (lambda c: c["knowledge_bases"]["synthetic"].update(validation="loose"), "'loose' is not one of"),
    (lambda c: c["runs"]["synthetic_rag"].update(top_k="five"), "'five' is not of type 'integer'"),
    (lambda c: c["knowledge_bases"]["synthetic"].pop("documents"), "'documents' is a required property"),
    (lambda c: c["models"]["tiny"].update(block_pattern="T;M"), "does not match"),
    (lambda c: c.update(knowledge_bases={"my kb": {"documents": "x.jsonl"}}), "does not match"),
])
def test_schema_errors_are_clear(mutate, message, effective_schema):
    config = copy.deepcopy(load("config/config.yaml"))
    mutate(config)
    with pytest.raises(WorkflowError) as err:
        validate(config, effective_schema)
    assert message in str(err.value), str(err.value)


def test_dangling_references_are_named(effective_schema):
    config = load("config/config.yaml")
    validate(config, effective_schema)
    config["runs"]["synthetic_rag"]["knowledge_base"] = "nope"
    config["runs"]["synthetic_refrag"].update(k_max=1, top_k=2, compare_with="synthetic_refrag")
    config["runs"]["synthetic_rag"]["compare_with"] = "synthetic_rag"
    with pytest.raises(ValueError) as err:
        wf_config.check_config_references(config)
    text = str(err.value)
    assert "runs.synthetic_rag.knowledge_base: 'nope' is not a key of knowledge_bases (known: synthetic)" in text
    assert "runs.synthetic_refrag: k_max=1 is smaller than top_k=2" in text
    assert "runs.synthetic_refrag.compare_with: 'synthetic_refrag' is not a rag run (rag runs: synthetic_rag)" in text
    assert "runs.synthetic_rag.compare_with: only refrag runs name a rag run here" in text


def test_schema_defaults_match_cli_defaults():
    """Where a library CLI has the same setting, the schema's default is the CLI's default."""
    schema = yaml.safe_load(Path(SCHEMA).read_text())["properties"]
    kb = schema["knowledge_bases"]["additionalProperties"]["properties"]
    from nanochat.data import chunking
    src = Path(chunking.__file__).read_text()
    assert f'"--chunk_tokens", type=int, default={kb["chunk_tokens"]["default"]}' in src
    assert f'"--overlap", type=int, default={kb["chunk_overlap"]["default"]}' in src
    run = schema["runs"]["additionalProperties"]["properties"]
    train = run["train"]["properties"]
    from scripts import rag_finetune, refrag_finetune
    rag = rag_finetune.build_parser().parse_args(["--knowledge_base", "kb"])
    refrag = refrag_finetune.build_parser().parse_args(["--knowledge_base", "kb"])
    assert rag.top_k == run["top_k"]["default"] and rag.p_gold == refrag.p_gold == train["p_gold"]["default"]
    assert rag.max_doc_length == train["max_doc_length"]["default"]
    assert refrag.max_hops == run["max_hops"]["default"] and refrag.hop_strategy == run["hop_strategy"]["default"]
    assert refrag.rl_steps == train["rl_steps"]["default"] and refrag.num_samples == train["num_samples"]["default"]
    assert refrag.rl_lr_frac == train["rl_lr_frac"]["default"] and refrag.use_rewards == run["use_rewards"]["default"]


def test_fine_tune_parsers_share_one_definition():
    """Both scripts' common flags come from nanochat.train.args: same help, same choices (from the registries)."""
    from nanochat.retrieval.hop_strategies import offline_choices
    from nanochat.retrieval.registry import RETRIEVERS
    from scripts import rag_finetune, refrag_finetune
    rag = {a.dest: a for a in rag_finetune.build_parser()._actions}
    refrag = {a.dest: a for a in refrag_finetune.build_parser()._actions}
    shared = set(rag) & set(refrag) - {"help"}
    assert {"knowledge_base", "task_samples", "save_every", "save_every_minutes", "keep_last", "resume"} <= shared
    assert set(rag) - set(refrag) == set()  # refrag only adds its own
    for dest in shared - {"output_tag"}:
        assert rag[dest].help == refrag[dest].help, dest
    assert rag["retriever_type"].choices == refrag["retriever_type"].choices == list(RETRIEVERS)
    assert list(refrag["hop_strategy"].choices) == offline_choices()
    # where the guide gives REFRAG its own default, the parser has it
    assert (rag["device_batch_size"].default, refrag["device_batch_size"].default) == (4, 2)


def pretrained_config():
    return copy.deepcopy(load("tests/workflow/config_upstream.yaml"))


def test_a_checkpoint_model_gets_its_defaults_and_none_of_a_scratch_size(effective_schema):
    """models entries are one of two kinds; only the kind that applies fills its defaults (if/then/else, not oneOf)."""
    config = pretrained_config()
    config["models"]["tiny"] = {"depth": 2}
    validate(config, effective_schema)
    up, tiny = config["models"]["upstream_d4"], config["models"]["tiny"]
    assert up["checkpoint"]["source"] == "base" and up["checkpoint"]["step"] is None
    assert up["hybridize"]["init"] == "attention" and up["hybridize"]["lr"] == 0.001 and up["hybridize"]["steps"] == 4
    assert set(up) == {"checkpoint", "hybridize"}  # no depth, n_embd, max_steps... from the scratch kind
    assert tiny["n_embd"] == 128 and "checkpoint" not in tiny


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m["checkpoint"].update(source="chat"), "'chat' is not one of"),
    (lambda m: m["hybridize"].pop("block_pattern"), "'block_pattern' is a required property"),
    (lambda m: m["hybridize"].update(block_pattern="T,T,X,M"), "does not match"),
    (lambda m: m["hybridize"].update(init="zeros"), "'zeros' is not one of"),
    (lambda m: m.update(depth=4), "Additional properties are not allowed ('depth'"),
    (lambda m: m["checkpoint"].pop("model_tag"), "'model_tag' is a required property"),
])
def test_checkpoint_model_errors_are_clear(mutate, message, effective_schema):
    config = pretrained_config()
    mutate(config["models"]["upstream_d4"])
    with pytest.raises(WorkflowError) as err:
        validate(config, effective_schema)
    assert message in str(err.value), str(err.value)


def test_a_checkpoint_that_is_not_there_is_named(effective_schema, tmp_path):
    config = pretrained_config()
    validate(config, effective_schema)
    config["models"]["upstream_d4"]["checkpoint"]["step"] = 7
    config["models"]["other"] = {"checkpoint": {"base_dir": str(tmp_path), "source": "sft", "model_tag": "d20"}}
    with pytest.raises(ValueError) as err:
        wf_config.check_config_references(config)
    text = str(err.value)
    assert f"models.other.checkpoint: {tmp_path}/chatsft_checkpoints/d20 does not exist" in text
    assert "models.upstream_d4.checkpoint.step: tests/fixtures/nanochat_upstream/2026-07-92d63d4/base_checkpoints/d4/" \
           "meta_000007.json does not exist (steps there: 000060)" in text


def test_runs_of_a_checkpoint_model_start_from_it_with_its_tokenizer(effective_schema):
    config = pretrained_config()
    validate(config, effective_schema)
    config["models"]["plain"] = {"checkpoint": {"base_dir": "x", "source": "base", "model_tag": "d4"}}  # no hybridize
    assert wf_config.start_tag(config, "tiny", "upstream_d4") == "tiny.upstream_d4"  # the per-KB hybrid
    assert wf_config.base_model_done(config, "tiny", "upstream_d4") == "results/models/tiny/upstream_d4/base_model.json"
    assert wf_config.start_tag(config, "tiny", "plain") == "plain"  # the import itself, shared by every KB
    assert wf_config.base_model_done(config, "tiny", "plain") == "results/imported/plain/model.json"
    assert wf_config.tokenizer_meta(config, "tiny", "plain") == "results/imported/plain/tokenizer/tokenizer_meta.json"
    assert "--source base --model_tag tiny.upstream_d4" in wf_config.finetune_args(config, "tiny_rag")


def test_the_from_checkpoint_example_is_the_default_but_for_the_model(effective_schema):
    """config/from_checkpoint.yaml (the issue-13 run): valid, and its runs are config.yaml's with another model."""
    config, default = load("config/from_checkpoint.yaml"), load("config/config.yaml")
    validate(config, effective_schema)
    validate(default, effective_schema)
    assert wf_config.is_hybridized(config["models"]["hybrid_tiny"])
    for mine, theirs in (("hybrid_rag", "synthetic_rag"), ("hybrid_refrag", "synthetic_refrag")):
        run, ref = dict(config["runs"][mine]), dict(default["runs"][theirs])
        assert run.pop("model") == "hybrid_tiny" and ref.pop("model") == "tiny"
        for key in ("init_from", "compare_with"):
            assert (run.pop(key, None) or "").replace("hybrid", "synthetic") == (ref.pop(key, None) or "")
        assert run == ref, mine
