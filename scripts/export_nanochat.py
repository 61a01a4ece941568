"""Export a checkpoint to upstream nanochat's layout (thin entry point; the logic is nanochat.upstream.export).

    python -m scripts.export_nanochat --source rag --model_tag TAG --output DIR [--kind sft] [--era 2025-11]

Writes DIR/<kind>_checkpoints/<tag>/model_<step>.pt + meta_<step>.json and DIR/tokenizer/tokenizer.pkl +
token_bytes.pt, which upstream's own `load_model` reads with NANOCHAT_BASE_DIR=DIR. A model upstream cannot
represent (Mamba layers, a copy head, options of no single upstream era, a tokenizer tiktoken would encode
differently) is not written: the command exits 2 listing every reason.
"""
from __future__ import annotations

import sys

from nanochat.cli import ArgumentParser
from nanochat.common import setup_logging


def parse_args(argv=None):
    p = ArgumentParser(description="Write a checkpoint + tokenizer in upstream nanochat's layout")
    p.add_argument("--source", default="rag", help="checkpoint family: base | mid | sft | rag | refrag, or a checkpoint dir")
    p.add_argument("--model_tag", default=None, help="tag under <base_dir>/<source>_checkpoints (default: largest)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: last)")
    p.add_argument("--base_dir", default=None, help="where to read from (default $NANOCHAT_BASE_DIR or ~/.cache/nanochat)")
    p.add_argument("--output", required=True, help="upstream base dir to write (its NANOCHAT_BASE_DIR)")
    p.add_argument("--kind", default=None, choices=["base", "chatsft", "chatrl"],
                   help="upstream checkpoint family to write (default: base for --source base, else chatsft)")
    p.add_argument("--output_tag", default=None, help="tag to write (default: the source tag)")
    p.add_argument("--era", default=None, choices=["2025-11", "2026-07"],
                   help="upstream era to target (default: the one the model matches)")
    return p.parse_args(argv)


def main(argv=None):
    setup_logging()
    args = parse_args(argv)
    from nanochat.checkpoint_manager import load_model
    from nanochat.upstream.export import NotRepresentable, export_checkpoint
    model, tokenizer, meta = load_model(args.source, "cpu", "eval", model_tag=args.model_tag, step=args.step,
                                        base_dir=args.base_dir)
    tag = args.output_tag or args.model_tag or meta.get("model_tag") or "d" + str(model.config.n_layer)
    kind = args.kind or ("base" if args.source == "base" else "chatsft")
    lineage = {"source": args.source, "source_tag": args.model_tag or meta.get("model_tag"), "source_step": meta.get("step")}
    try:
        out = export_checkpoint(model, tokenizer, args.output, tag, int(meta.get("step", 0)), kind=kind, era=args.era,
                                lineage=lineage)
    except NotRepresentable as e:
        print(f"export_nanochat: {args.source}/{tag} {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"exported {args.source}/{tag} as {out['era']} -> {out['checkpoint_dir']} (+ {out['tokenizer_dir']})")
    for note in out["notes"]:
        print(f"note: {note}")
    print(f"upstream: NANOCHAT_BASE_DIR={args.output} python -m scripts.chat_cli -i "
          f"{'base' if kind == 'base' else 'sft'} -g {tag}")
    return out


if __name__ == "__main__":
    main()
