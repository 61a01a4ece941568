"""python -m nanochat.data.sources NAME --input PATH --output DIR [--seed 0 --val_fraction F --test_fraction F]:
convert a public dataset to documents.jsonl + queries_<split>.jsonl (+ manifest.json)."""
from __future__ import annotations

import inspect
import json
import sys

from nanochat.cli import ArgumentParser, output_dir
from nanochat.common import print0
from nanochat.data.sources.registry import SOURCES, get_converter


def main(argv=None) -> int:
    p = ArgumentParser(description="Convert a public dataset to documents.jsonl + queries_<split>.jsonl")
    p.add_argument("source", choices=list(SOURCES), help="dataset format")
    p.add_argument("--input", required=True, help="the dataset file or folder")
    p.add_argument("--output", required=True, type=output_dir, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="split seed (sources without given splits)")
    p.add_argument("--val_fraction", type=float, default=None, help="share in val (default: the source's)")
    p.add_argument("--test_fraction", type=float, default=None, help="share in test (default: the source's)")
    args = p.parse_args(argv)
    convert = get_converter(args.source)
    kwargs = {"seed": args.seed}
    if args.val_fraction is not None or args.test_fraction is not None:
        default = inspect.signature(convert).parameters.get("fractions")
        if default is None:
            p.error(f"{args.source} comes with its own splits; --val_fraction/--test_fraction do not apply")
        val = default.default[1] if args.val_fraction is None else args.val_fraction
        test = default.default[2] if args.test_fraction is None else args.test_fraction
        kwargs["fractions"] = (1 - val - test, val, test)
    manifest = convert(args.input, args.output, **kwargs)
    print0(f"{args.source}: wrote {args.output}: " + json.dumps({k: v for k, v in manifest.items()
                                                                 if k.startswith("n_") or k in ("documents", "queries")}))
    return 0


def run_source(name: str, argv=None) -> int:
    """A source module's own CLI (python -m nanochat.data.sources.squad ...) is this one with the name given."""
    return main([name, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
