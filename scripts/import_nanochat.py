"""Bring an existing nanochat checkpoint into this project's layout (the inverse of scripts.export_nanochat).

    python -m scripts.import_nanochat --base_dir ~/nanochat_runs --source sft --model_tag d20 \
        --output_base_dir results/checkpoints --output_tag my_d20 [--tokenizer_out DIR] [--require_mamba true]

Loads the checkpoint as `load_model` does (upstream's eras, bf16 weights, tokenizer.pkl read without pickle code,
the project's special tokens added as new rows) and saves it unchanged in function as
<output_base_dir>/base_checkpoints/<output_tag>/: a model_config with every option explicit, the tokenizer as
tokenizer.json beside it with its content hash, and meta["imported_from"] naming where it came from. The workflow
starts a model entry with a `checkpoint:` block from this copy, so its runs never depend on the user's directory
staying as it was. --tokenizer_out also writes the tokenizer alone (what the workflow's dataset rules read).
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from nanochat.checkpoint_manager import SOURCES
from nanochat.cli import ArgumentParser
from nanochat.common import setup_logging


def parse_args(argv=None):
    p = ArgumentParser(description="Copy a nanochat checkpoint (upstream's or this project's) into this project's layout")
    p.add_argument("--base_dir", default=None, help="where it is (default $NANOCHAT_BASE_DIR or ~/.cache/nanochat)")
    p.add_argument("--source", default="base", choices=list(SOURCES),
                   help="its family: <base_dir>/{base,mid,chatsft,rag,refrag}_checkpoints/ (sft = chatsft)")
    p.add_argument("--model_tag", required=True, help="its tag under that family")
    p.add_argument("--step", type=int, default=None, help="its step (default: last)")
    p.add_argument("--output_base_dir", required=True, help="base dir to write <output_base_dir>/base_checkpoints/ into")
    p.add_argument("--output_tag", default=None, help="tag to write (default: --model_tag)")
    p.add_argument("--tokenizer_out", default=None, help="also write its tokenizer (tokenizer.json + meta) here")
    p.add_bool("--require_mamba", False, "refuse an all-attention model (it would need scripts.hybridize first)")
    return p.parse_args(argv)


def main(argv=None):
    setup_logging()
    args = parse_args(argv)
    from nanochat.checkpoint_manager import checkpoint_dir_of, load_model, save_checkpoint
    from nanochat.gpt import suggest_hybrid_pattern
    model, tokenizer, meta = load_model(args.source, "cpu", "eval", model_tag=args.model_tag, step=args.step,
                                        base_dir=args.base_dir)
    where = checkpoint_dir_of(args.source, args.model_tag, args.base_dir)
    if args.require_mamba and not model.has_mamba:
        raise SystemExit(f"import_nanochat: {where} is all-attention ({','.join(model.config.block_pattern)}); RAG needs "
                         f"Mamba layers. Hybridize it first: in the workflow, give its model entry a `hybridize:` block "
                         f"(e.g. block_pattern: \"{suggest_hybrid_pattern(model.config.n_layer)}\"); on the command line, "
                         f"python -m scripts.hybridize --source {args.source} --model_tag {args.model_tag} ...")
    tag = args.output_tag or args.model_tag
    out = Path(args.output_base_dir) / "base_checkpoints" / tag
    step = int(meta.get("step") or 0)
    imported = {"checkpoint_dir": str(where.resolve()), "source": args.source, "model_tag": args.model_tag,
                "step": step, "era": meta.get("era", "project")}
    keep = {k: meta[k] for k in ("lineage", "vocab_growth", "lr") if k in meta}
    staging = out.with_name(out.name + ".importing")  # a partial copy never sits under the tag
    shutil.rmtree(staging, ignore_errors=True)
    save_checkpoint(staging, step, model.state_dict(), None,
                    {"step": step, "model_config": dataclasses.asdict(model.config), "model_tag": tag,
                     "imported_from": imported, **keep}, tokenizer=tokenizer)
    shutil.rmtree(out, ignore_errors=True)  # a previous import of another checkpoint under this tag
    staging.rename(out)
    if args.tokenizer_out:
        tokenizer.save(args.tokenizer_out)
    print(f"imported {where} (step {step}, {imported['era']}, {','.join(model.config.block_pattern)}, vocab "
          f"{model.config.vocab_size}) -> {out}")
    return out


if __name__ == "__main__":
    main()
