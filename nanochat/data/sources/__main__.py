"""python -m nanochat.data.sources NAME --input PATH --output DIR [--seed 0]: convert a public dataset."""
from __future__ import annotations

import json

from nanochat.common import print0
from nanochat.cli import ArgumentParser, output_dir
from nanochat.data.sources.registry import SOURCES, get_converter


def main(argv=None) -> int:
    p = ArgumentParser(description="Convert a public dataset to documents.jsonl + queries_<split>.jsonl")
    p.add_argument("source", choices=list(SOURCES), help="dataset format")
    p.add_argument("--input", required=True, help="the dataset file or folder")
    p.add_argument("--output", required=True, type=output_dir, help="output directory")
    p.add_argument("--seed", type=int, default=0, help="split seed (sources without given splits)")
    args = p.parse_args(argv)
    manifest = get_converter(args.source)(args.input, args.output, seed=args.seed)
    print0(json.dumps(manifest, indent=1, default=str)[:2000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
