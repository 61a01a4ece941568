"""Every list of choices in the config schema equals the registry the code dispatches on.

    python -m pytest -q tests/test_schema_enums.py
"""
import re
from pathlib import Path

import yaml

from nanochat.blocks import BLOCKS
from nanochat.data.documents import VALIDATION_MODES
from nanochat.retrieval.dense import INDEX_KINDS
from nanochat.retrieval.hop_strategies import NEEDS_MODEL, STRATEGIES
from nanochat.retrieval.registry import RETRIEVERS

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())


def offline_strategies() -> list[str]:
    """Hop strategies precomputed retrieval can run from a config: those that need no query-writing model."""
    return [s for s in STRATEGIES if s not in NEEDS_MODEL]


# schema path of an enum -> the registry its values must equal (in order)
REGISTRIES = {
    "runs.*.retriever_type": lambda: list(RETRIEVERS),
    "runs.*.hop_strategy": offline_strategies,
    "knowledge_bases.*.validation": lambda: list(VALIDATION_MODES),
    "knowledge_bases.*.dense.index": lambda: list(INDEX_KINDS),
}
# enums with no registry in the library, and why
NO_REGISTRY = {
    "device": "any torch device string works in code (resolve_device); the schema narrows it to auto/cpu/cuda",
    "runs.*.mode": "one fine-tune and one evaluation rule per mode (rules/train.smk, rules/evaluate.smk)",
}


def enums(node, path=""):
    """(dotted path, enum) for every enum in the schema; '*' stands for a named entry (additionalProperties)."""
    if "enum" in node:
        yield path, node["enum"]
    for key, sub in node.get("properties", {}).items():
        yield from enums(sub, f"{path}.{key}" if path else key)
    if isinstance(node.get("additionalProperties"), dict):
        yield from enums(node["additionalProperties"], f"{path}.*")


def test_schema_enums_equal_registries():
    found = dict(enums(SCHEMA))
    assert set(found) == set(REGISTRIES) | set(NO_REGISTRY), "a schema enum without a registry check (or reason)"
    for path, registry in REGISTRIES.items():
        assert found[path] == registry(), f"{path}: schema {found[path]} != registry {registry()}"


def test_block_pattern_letters_equal_block_registry():
    pattern = SCHEMA["properties"]["models"]["additionalProperties"]["properties"]["block_pattern"]["pattern"]
    letters = "".join(BLOCKS)
    assert pattern == f"^[{letters}](,[{letters}])*$"


def test_workflow_spells_out_no_registry_list():
    """The Snakefile's kb_type regex and any other choice list in the workflow derive from the registries."""
    names = set(RETRIEVERS) | set(STRATEGIES) | set(VALIDATION_MODES)
    for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        for choices in re.findall(r"[\"']([\w|]+\|[\w|]+)[\"']", path.read_text()):
            assert not set(choices.split("|")) <= names, f"{path.name}: hand-written choice list {choices!r}"
    assert 'kb_type="|".join(RETRIEVERS)' in (ROOT / "Snakefile").read_text()
