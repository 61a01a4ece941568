"""Where fine-tunes start: every --source (sft = upstream's chatsft_checkpoints), and the help a user gets when the
base dir has no such model (the commands that bring or make one, never a wrong "no base model")."""
import shutil
from pathlib import Path

import pytest

from nanochat.train.args import START_SOURCES
from scripts import rag_finetune, refrag_finetune

FIXTURE = Path(__file__).parent / "fixtures" / "nanochat_upstream" / "2026-07-92d63d4"


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    from nanochat.data.synthetic import generate_world
    from nanochat.retrieval import build_knowledge_base
    root = tmp_path_factory.mktemp("sources")
    generate_world(root / "data", seed=0, n_entities=30)
    build_knowledge_base(root / "data" / "documents.jsonl", root / "kb", retriever_types=("simple",), show_progress=False)
    return root / "kb"


def upstream_base_dir(root: Path, family: str) -> Path:
    """Upstream's layout: <root>/<family>_checkpoints/d4/ and <root>/tokenizer/tokenizer.pkl."""
    shutil.copytree(FIXTURE / "tokenizer", root / "tokenizer")
    shutil.copytree(FIXTURE / "base_checkpoints" / "d4", root / f"{family}_checkpoints" / "d4")
    return root


def test_every_finetune_parser_offers_sft():
    assert "sft" in START_SOURCES
    assert rag_finetune.build_parser().parse_args(["--knowledge_base", "kb", "--source", "sft"]).source == "sft"
    refrag = refrag_finetune.build_parser()
    for source in (*START_SOURCES, "rag"):
        assert refrag.parse_args(["--knowledge_base", "kb", "--source", source]).source == source
    with pytest.raises(SystemExit):
        rag_finetune.build_parser().parse_args(["--knowledge_base", "kb", "--source", "chat"])


def test_sft_source_loads_upstreams_chatsft_model(kb, tmp_path):
    """The model loads through --source sft; it is all-attention, so RAG refuses it and names scripts.hybridize."""
    base = upstream_base_dir(tmp_path, "chatsft")
    with pytest.raises(ValueError, match="RAG requires Mamba") as e:
        rag_finetune.main(["--knowledge_base", str(kb), "--source", "sft", "--model_tag", "d4", "--base_dir", str(base),
                           "--device", "cpu", "--max_steps", "1", "--base_tasks", "none"])
    assert "scripts.hybridize" in str(e.value)


def test_empty_base_dir_names_both_ways_to_get_a_model(kb, tmp_path):
    with pytest.raises(SystemExit) as e:
        rag_finetune.main(["--knowledge_base", str(kb), "--source", "sft", "--base_dir", str(tmp_path), "--device", "cpu"])
    msg = str(e.value)
    assert f"{tmp_path}/chatsft_checkpoints/<tag>/model_<step>.pt" in msg and "tokenizer/tokenizer.pkl" in msg
    assert f"python -m scripts.hybridize --source sft --model_tag <tag> --knowledge_base {kb}" in msg
    assert f"python -m scripts.tok_train --knowledge_base {kb}" in msg and "scripts.base_train" in msg


def test_another_family_that_is_there_is_named(kb, tmp_path):
    """An upstream user with only base_checkpoints who runs the guide's default --source mid is told to use base."""
    base = upstream_base_dir(tmp_path, "base")
    with pytest.raises(SystemExit) as e:
        rag_finetune.main(["--knowledge_base", str(kb), "--base_dir", str(base), "--device", "cpu"])  # --source mid
    assert "No 'mid' model to fine-tune" in str(e.value) and "--source base (tags d4)" in str(e.value)


def test_a_wrong_tag_lists_the_tags_without_the_training_advice(kb, tmp_path):
    base = upstream_base_dir(tmp_path, "base")
    with pytest.raises(SystemExit) as e:
        rag_finetune.main(["--knowledge_base", str(kb), "--source", "base", "--model_tag", "d20", "--base_dir", str(base),
                           "--device", "cpu"])
    assert "model_tag 'd20' not found" in str(e.value) and "['d4']" in str(e.value)
    assert "scripts.base_train" not in str(e.value)
