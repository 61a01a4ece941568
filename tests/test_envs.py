"""envs/*.yaml pin exactly pyproject.toml's dependencies (same names, same versions).

    python -m pytest -q tests/test_envs.py
"""
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)\s*(==\s*[^\s;]+)?")


def pins(requirements):
    out = {}
    for req in requirements:
        m = PIN.match(req.strip())
        if m and not req.startswith("-"):
            out[m.group(1).lower().replace("_", "-")] = (m.group(2) or "").replace(" ", "")
    return out


def env_pip(path):
    doc = yaml.safe_load(path.read_text())
    pip = [d["pip"] for d in doc["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert pip, f"{path}: no pip section"
    return pins(pip[0])


@pytest.mark.parametrize("env", ["cpu.yaml", "gpu.yaml"])
def test_env_pins_match_pyproject(env):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = pins(project["dependencies"])
    got = env_pip(ROOT / "envs" / env)
    for name, version in wanted.items():
        assert name in got, f"envs/{env}: {name} missing (pyproject pins {name}{version})"
        assert got[name] == version, f"envs/{env}: {name}{got[name]} but pyproject.toml pins {name}{version}"
    extras = set(got) - set(wanted) - {p.lower() for p in pins(project["optional-dependencies"]["gpu"])}
    assert not extras, f"envs/{env}: packages not in pyproject.toml: {sorted(extras)}"


def test_every_rule_env_exists():
    for smk in (ROOT / "rules").glob("*.smk"):
        for ref in re.findall(r'ENV_(\w+)', smk.read_text()):
            assert (ROOT / "envs" / f"{ref.lower()}.yaml").is_file(), f"{smk.name}: envs/{ref.lower()}.yaml missing"
