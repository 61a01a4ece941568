"""Checkpoint configs of every known era -> GPTConfig, so each era's checkpoint computes what its code computed.

A checkpoint's meta.json holds `model_config`, the keyword arguments of the GPTConfig that wrote it. Upstream
nanochat's GPTConfig has grown fields and, more often, changed its forward without a field saying so. An era
pins one upstream commit: the fields it writes and the GPTConfig options that reproduce its forward (on the
CPU, fp32, as tests/fixtures/nanochat_upstream checks). This project's own checkpoints carry every option
explicitly. Adding an era is one entry in ERAS plus a fixture.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

UPSTREAM_BASE_FIELDS = ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd")


@dataclass(frozen=True)
class Era:
    key: str
    description: str
    fields: tuple                      # exactly the model_config keys that era's code writes
    options: dict = field(default_factory=dict)  # GPTConfig options reproducing its forward
    upstream: bool = True              # an upstream nanochat layout (tokenizer.pkl, no tokenizer copy in meta)


ERAS = {
    "2025-11": Era("2025-11", "nanochat 16788ee (Nov 2025)", UPSTREAM_BASE_FIELDS,
                   # rotary tables are bf16 on every device; nothing else differs from this project's transformer
                   dict(rotary_bf16=True)),
    "2026-07": Era("2026-07", "nanochat 92d63d4 (Jul 2026)", UPSTREAM_BASE_FIELDS + ("window_pattern",),
                   # rotary tables in the compute dtype: fp32 on the CPU (bf16 on GPUs with bf16)
                   dict(rotary_base=100000.0, qk_scale=1.2, value_embeds=True, smear=True, backout=True,
                        layer_lambdas=True, pad_vocab_size_to=64)),
    "turbo": Era("turbo", "nanochat-turbo fork (hybrid: block_pattern list, Mamba-1 blocks, mamba_use_mlp)",
                 UPSTREAM_BASE_FIELDS + ("block_pattern", "mamba_d_state", "mamba_d_conv", "mamba_expand",
                                         "mamba_use_mlp"),
                 dict(mamba_version=1)),
}
PROJECT_ERA = "project"


class UnknownConfigField(ValueError):
    """model_config has a field that no known era writes."""


def project_fields() -> tuple:
    from nanochat.gpt import GPTConfig
    return tuple(f.name for f in dataclasses.fields(GPTConfig))


def known_eras_text() -> str:
    lines = [f"  {e.description}: {', '.join(e.fields)}" for e in ERAS.values()]
    lines.append(f"  this project (nanochat-rag): {', '.join(project_fields())}")
    return "\n".join(lines)


def detect_era(model_config: dict, where: str = "model_config") -> str:
    """The era whose code wrote this model_config; unknown fields are an error naming them and the known eras."""
    keys = set(model_config)
    unknown = sorted(keys - set(project_fields()))
    if unknown:
        raise UnknownConfigField(f"{where}: model_config field{'s' if len(unknown) > 1 else ''} "
                                 f"{', '.join(repr(u) for u in unknown)} not known to any era this project "
                                 f"reads. Known eras and their fields:\n{known_eras_text()}")
    if "mamba_version" in keys or "copy_head" in keys:
        return PROJECT_ERA  # written by this project (asdict of its GPTConfig)
    for era in ERAS.values():
        if keys == set(era.fields) or (era.key == "turbo" and "mamba_use_mlp" in keys and keys <= set(era.fields)):
            return era.key
    if "block_pattern" in keys:
        return PROJECT_ERA  # an older project config
    raise UnknownConfigField(f"{where}: fields {sorted(keys)} match no known era (a commit between the pinned ones?). "
                             f"Known eras and their fields:\n{known_eras_text()}")


def config_from_meta(model_config: dict, where: str = "model_config"):
    """-> (GPTConfig, era key). Upstream eras get the options that reproduce their forward."""
    from nanochat.gpt import GPTConfig
    era = detect_era(model_config, where)
    kwargs = dict(model_config)
    if era != PROJECT_ERA:
        kwargs = {**ERAS[era].options, **kwargs}
    return GPTConfig(**kwargs), era


def is_upstream(era: str) -> bool:
    return era in ERAS and ERAS[era].upstream


# the GPTConfig options that tell the eras apart (block types and the copy head are checked by the exporter)
FEATURES = ("rotary_base", "qk_scale", "window_pattern", "value_embeds", "smear", "backout", "layer_lambdas",
            "pad_vocab_size_to")


def era_differences(config, era: str) -> list[str]:
    """What keeps `config` from being exactly this upstream era's model (empty: representable)."""
    e = ERAS[era]
    want, _ = config_from_meta({k: getattr(config, k) for k in e.fields})
    diffs = [f"{name}={getattr(config, name)!r} where {e.description} has {getattr(want, name)!r}"
             for name in FEATURES if getattr(config, name) != getattr(want, name)]
    if "window_pattern" in e.fields and config.window_pattern is None:
        diffs.append(f"window_pattern=None where {e.description} needs a pattern (\"L\" = full context)")
    return diffs
