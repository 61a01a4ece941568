"""Shared pytest setup: offline model loading, the gpu marker, real data location.

Run the suite with `python -m pytest -q` from the repository root.
"""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run only where CUDA is present; elsewhere they skip with the reason."""
    import torch
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on a GPU host: python -m pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (BEIR SciFact, HotpotQA, SQuAD subsets)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA}: CI lays ../shared beside the checkout")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _cpu_tests_build_cpu_mixers(request):
    """Tests not marked `gpu` run their models on the CPU: on a GPU host with mamba-ssm installed, models built
    without a device would otherwise get mamba-ssm's CUDA-only mixers."""
    if "gpu" in request.keywords:
        yield
        return
    from nanochat.mamba import building_for
    with building_for("cpu"):
        yield


@pytest.fixture(scope="session")
def chat_world(tmp_path_factory):
    """Tiny trained RAG + REFRAG checkpoints over a synthetic KB, shared by the chat, API and browser tests."""
    from tests.chat_world import build_chat_world
    return build_chat_world(tmp_path_factory.mktemp("chat_world"))
