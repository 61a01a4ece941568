"""Workflow helpers on the command line (rules and CI call these):

    python -m nanochat.pipeline dvc [--check]            # dvc.yaml from the Snakemake DAG
    python -m nanochat.pipeline prepare_resume --checkpoint_dir D --inputs F.. --settings "..."
    python -m nanochat.pipeline mark_checkpoint --checkpoint_dir D --output done.json
    exec python -m nanochat.pipeline guard torchrun ...  # run a launcher that dies with its parent (Linux)

Rules call the launch commands as `python -m nanochat.pipeline.launch ...`, so that a training rule's code
dependencies do not include the dvc.yaml generator.

(`python -m nanochat.workflow_tools ...` is the same command under its old name.)
"""
from __future__ import annotations

from nanochat.cli import ArgumentParser
from nanochat.common import setup_logging
from nanochat.pipeline.dvc import write_or_check
from nanochat.pipeline import launch


def main(argv=None) -> int:
    parser = ArgumentParser(description="Workflow helpers (dvc.yaml generation, safe resume, done-markers)")
    sub = parser.add_subparsers(dest="command", required=True)
    launch.add_commands(sub)
    p = sub.add_parser("dvc", help="generate dvc.yaml from the Snakemake DAG")
    p.add_argument("--output", default="dvc.yaml")
    p.add_argument("--configfile", default="config/config.yaml")
    p.add_bool("--check", default=False, help="exit 1 when the file differs from the generated one")
    args = parser.parse_args(argv)
    setup_logging()
    if args.command == "dvc":
        return write_or_check(args.output, args.configfile, check=args.check)
    return launch.run_command(args)


if __name__ == "__main__":
    raise SystemExit(main())
