"""Every list of choices in the config schema equals the registry the code dispatches on.

    python -m pytest -q tests/test_schema_enums.py
"""
import re
from pathlib import Path

import yaml

from nanochat.blocks import BLOCKS
from nanochat.checkpoint_manager import SOURCES
from nanochat.hybridize import INITS, TRAINABLE
from nanochat.data.synthetic import WORLDS
from nanochat.rag.conversation import CITE_STYLES
from nanochat.rag.raft import NEGATIVES
from nanochat.data.documents import VALIDATION_MODES
from nanochat.retrieval.dense import INDEX_KINDS
from nanochat.retrieval.hop_strategies import NEEDS_MODEL, STRATEGIES
from nanochat.pipeline.config import schema_with_registries
from nanochat.retrieval.hop_strategies import offline_choices
from nanochat.retrieval.registry import RETRIEVERS

ROOT = Path(__file__).resolve().parents[1]
RAW_SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
SCHEMA = schema_with_registries()  # what the workflow validates against


def offline_strategies() -> list[str]:
    """Hop strategies precomputed retrieval can run from a config: those that need no query-writing model."""
    return [s for s in STRATEGIES if s not in NEEDS_MODEL]


# schema path of an enum -> the registry its values must equal (in order)
REGISTRIES = {
    "runs.*.retriever_type": lambda: list(RETRIEVERS),
    "runs.*.hop_strategy": offline_choices,
    "knowledge_bases.*.validation": lambda: list(VALIDATION_MODES),
    "models.*.checkpoint.source": lambda: list(SOURCES),
    "models.*.hybridize.init": lambda: list(INITS),
    "models.*.hybridize.train": lambda: list(TRAINABLE),
    "synthetic.world": lambda: list(WORLDS),
    "runs.*.train.negatives": lambda: list(NEGATIVES),
    "runs.*.train.cite": lambda: list(CITE_STYLES),
    "knowledge_bases.*.dense.index": lambda: list(INDEX_KINDS),
}
# enums with no registry in the library, and why
NO_REGISTRY = {
    "device": "any torch device string works in code (resolve_device); the schema narrows it to auto/cpu/cuda",
    "runs.*.mode": "one fine-tune and one evaluation rule per mode (rules/train.smk, rules/evaluate.smk)",
}


def resolve(node, schema):
    """A node with its `$ref` ("#/definitions/x") followed."""
    while "$ref" in node:
        for part in node["$ref"].removeprefix("#/").split("/"):
            schema = schema[part]
        node = schema
    return node


def enums(node, path="", schema=None):
    """(dotted path, enum) for every enum in the schema; '*' stands for a named entry (additionalProperties);
    `$ref`s and both branches of an if/then/else are followed."""
    schema = schema or node
    node = resolve(node, schema)
    if "enum" in node:
        yield path, node["enum"]
    for key, sub in node.get("properties", {}).items():
        yield from enums(sub, f"{path}.{key}" if path else key, schema)
    if isinstance(node.get("additionalProperties"), dict):
        yield from enums(node["additionalProperties"], f"{path}.*", schema)
    for branch in ("then", "else"):
        if branch in node:
            yield from enums(node[branch], path, schema)


def test_schema_enums_equal_registries():
    found = dict(enums(SCHEMA))
    assert set(found) == set(REGISTRIES) | set(NO_REGISTRY), "a schema enum without a registry check (or reason)"
    for path, registry in REGISTRIES.items():
        assert found[path] == registry(), f"{path}: schema {found[path]} != registry {registry()}"
    # the file itself names the registry instead of copying its names: adding a retriever or a hop strategy
    # never touches the schema
    raw = dict(enums(RAW_SCHEMA))
    assert set(raw) == set(NO_REGISTRY), f"hand-written enums that a registry owns: {sorted(set(raw) - set(NO_REGISTRY))}"
    assert set(offline_strategies()) <= set(offline_choices())


def test_block_pattern_letters_equal_block_registry():
    defs = RAW_SCHEMA["definitions"]
    letters = "".join(BLOCKS)
    for pattern in (defs["scratch_model"]["properties"]["block_pattern"]["pattern"],
                    defs["pretrained_model"]["properties"]["hybridize"]["properties"]["block_pattern"]["pattern"]):
        assert pattern == f"^[{letters}](,[{letters}])*$"


def test_workflow_spells_out_no_registry_list():
    """The Snakefile's kb_type regex and any other choice list in the workflow derive from the registries."""
    names = set(RETRIEVERS) | set(STRATEGIES) | set(VALIDATION_MODES)
    for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        for choices in re.findall(r"[\"']([\w|]+\|[\w|]+)[\"']", path.read_text()):
            assert not set(choices.split("|")) <= names, f"{path.name}: hand-written choice list {choices!r}"
    assert 'kb_type="|".join(RETRIEVERS)' in (ROOT / "Snakefile").read_text()
