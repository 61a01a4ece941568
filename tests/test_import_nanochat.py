"""scripts.import_nanochat: an upstream checkpoint copied into the project's layout computes what it computed, with
the same tokenizer, and says where it came from."""
import json
from pathlib import Path

import pytest
import torch

from nanochat.checkpoint_manager import load_model
from nanochat.tokenizer import Tokenizer
from scripts import import_nanochat

FIXTURES = Path(__file__).parent / "fixtures" / "nanochat_upstream"


@pytest.mark.parametrize("era, tag", [("2025-11-16788ee", "d4_bf16"), ("2026-07-92d63d4", "d4")])
def test_import_keeps_the_function_and_the_tokenizer(era, tag, tmp_path):
    up_model, up_tok, up_meta = load_model("base", "cpu", "eval", model_tag=tag, base_dir=FIXTURES / era)
    out = import_nanochat.main(["--base_dir", str(FIXTURES / era), "--model_tag", tag, "--output_base_dir",
                                str(tmp_path), "--output_tag", "mine", "--tokenizer_out", str(tmp_path / "tok")])
    assert out == tmp_path / "base_checkpoints" / "mine" and not list(tmp_path.glob("base_checkpoints/*.importing"))
    model, tok, meta = load_model("base", "cpu", "eval", model_tag="mine", base_dir=tmp_path)
    assert "era" not in meta  # now a project checkpoint: every option explicit in its model_config
    assert meta["imported_from"]["era"] == up_meta["era"] and meta["imported_from"]["step"] == 60
    assert meta["vocab_growth"]["from"] == 300 and model.config.vocab_size == 308
    ids = torch.tensor([up_tok.encode("The fox and the dog.", prepend="<|bos|>")])
    with torch.no_grad():
        assert torch.equal(model(ids), up_model(ids))
    assert tok.content_hash() == up_tok.content_hash() == meta["tokenizer"]["hash"]
    assert Tokenizer.from_directory(tmp_path / "tok").content_hash() == up_tok.content_hash()
    # a second import under the same tag replaces the first
    import_nanochat.main(["--base_dir", str(FIXTURES / era), "--model_tag", tag, "--output_base_dir", str(tmp_path),
                          "--output_tag", "mine"])
    assert len(json.loads(next(out.glob("meta_*.json")).read_text())["tokenizer"]["hash"]) > 10


def test_require_mamba_names_the_hybridize_block(tmp_path):
    with pytest.raises(SystemExit) as e:
        import_nanochat.main(["--base_dir", str(FIXTURES / "2026-07-92d63d4"), "--model_tag", "d4",
                              "--output_base_dir", str(tmp_path), "--require_mamba", "true"])
    assert "all-attention (T,T,T,T)" in str(e.value) and "hybridize:" in str(e.value)
    assert not (tmp_path / "base_checkpoints").exists()
