"""Workflow helpers on the command line (rules and CI call these):

    python -m nanochat.pipeline dvc [--check]            # dvc.yaml from the Snakemake DAG
    python -m nanochat.pipeline prepare_resume --checkpoint_dir D --inputs F.. --settings "..."
    python -m nanochat.pipeline mark_checkpoint --checkpoint_dir D --output done.json
    exec python -m nanochat.pipeline guard torchrun ...  # run a launcher that dies with its parent (Linux)

(`python -m nanochat.workflow_tools ...` is the same command under its old name.)
"""
from __future__ import annotations

import argparse

from nanochat.cli import ArgumentParser
from nanochat.pipeline.dvc import write_or_check
from nanochat.pipeline.launch import mark_checkpoint, prepare_resume


def main(argv=None) -> int:
    parser = ArgumentParser(description="Workflow helpers (dvc.yaml generation, safe resume, done-markers)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare_resume", help="keep checkpoints only if inputs/settings are unchanged")
    p.add_argument("--checkpoint_dir", required=True)
    p.add_argument("--inputs", nargs="*", default=[])
    p.add_argument("--settings", default="")
    p = sub.add_parser("mark_checkpoint", help="write a done-marker for the last checkpoint of a directory")
    p.add_argument("--checkpoint_dir", required=True)
    p.add_argument("--output", required=True)
    p = sub.add_parser("guard", help="exec a command that gets SIGTERM when this process's parent dies")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="the command, e.g. torchrun --standalone ...")
    p = sub.add_parser("dvc", help="generate dvc.yaml from the Snakemake DAG")
    p.add_argument("--output", default="dvc.yaml")
    p.add_argument("--configfile", default="config/config.yaml")
    p.add_bool("--check", default=False, help="exit 1 when the file differs from the generated one")
    args = parser.parse_args(argv)
    if args.command == "prepare_resume":
        prepare_resume(args.checkpoint_dir, args.inputs, args.settings)
    elif args.command == "mark_checkpoint":
        mark_checkpoint(args.checkpoint_dir, args.output)
    elif args.command == "guard":
        from nanochat.train.lifeline import exec_guarded
        exec_guarded(args.argv)
    elif args.command == "dvc":
        return write_or_check(args.output, args.configfile, check=args.check)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
