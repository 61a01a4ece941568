"""The README's "Quick Start from an upstream checkpoint", run as written: the bash block is read from README.md and
run from the repository root, with only its scratch root /tmp/qs moved into the test's temporary directory."""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEADING = "### Quick Start from an upstream checkpoint"


def quickstart_block() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert HEADING in readme, f"README.md lost its section {HEADING!r}"
    m = re.search(r"```bash\n(.*?)```", readme[readme.index(HEADING):], re.S)
    return m.group(1)


def test_the_block_is_the_guide_path():
    """hybridize, then rag_finetune, then rag_eval, from a checkpoint under NANOCHAT_BASE_DIR in upstream's layout."""
    block = quickstart_block()
    steps = [m.group(1) for m in re.finditer(r"python -m (scripts\.\w+)", block)]
    assert steps == ["scripts.hybridize", "scripts.rag_finetune", "scripts.rag_eval"]
    assert "export NANOCHAT_BASE_DIR=" in block and "tokenizer}" in block  # the tokenizer.pkl directory goes along


@pytest.mark.slow
def test_quickstart_runs_as_written(tmp_path):
    root = tmp_path / "qs"
    script = quickstart_block().replace("/tmp/qs", str(root))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("NANOCHAT_BASE_DIR", None)
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    hybrid = json.loads(next((root / "base" / "base_checkpoints" / "hybrid-d4").glob("meta_*.json")).read_text())
    assert hybrid["lineage"]["teacher"]["era"] == "2026-07" and hybrid["lineage"]["block_pattern"] == ["T", "T", "M", "M"]
    done = json.loads((root / "base" / "rag_checkpoints" / "hybrid-d4" / "done.json").read_text())
    last = max(int(p.stem.split("_")[1]) for p in (root / "base" / "rag_checkpoints" / "hybrid-d4").glob("model_*.pt"))
    assert 0 < done["step"] == last <= 30  # --max_steps 30 caps one epoch of this small KB's examples
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    assert metrics["n"] == 20 and metrics["model_tag"] == "hybrid-d4" and 0.0 <= metrics["em"] <= 1.0
    assert metrics["retrieval_recall@2"] > 0.5  # the eval really searched the KB it was given
