"""The `bert4ray` command line (also `python -m pipelines`).

Each subcommand is a module in `pipelines/commands/` exposing

    HELP: str                                   one line for `bert4ray --help`
    def add_arguments(parser) -> None           its arguments
    def run(args) -> int                        the exit code

and one line in COMMANDS below. Modules are imported only when their command runs, so
`bert4ray --help` stays fast and one command's heavy imports never slow another.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

# name -> module; add a line when a command lands.
COMMANDS: dict[str, str] = {
    "index": "pipelines.commands.index",
    "predict": "pipelines.commands.predict",
    "serve": "pipelines.commands.serve",
    "train": "pipelines.commands.train",
    "data": "pipelines.commands.data",
    "attribute": "pipelines.commands.attribute",
    "quickstart": "pipelines.commands.quickstart",
    "submit": "pipelines.commands.submit",
    "jobs": "pipelines.commands.jobs",
    "chat": "pipelines.commands.chat",
    "probe": "pipelines.commands.probe",
    "tune": "pipelines.commands.tune",
    "mgs": "pipelines.commands.mgs",
    "rank": "pipelines.commands.rank",
    "sts": "pipelines.commands.sts",
    "export": "pipelines.commands.export",
}


class UserError(Exception):
    """A mistake in the user's input (recipe, data, arguments): printed as one line, exit code 2."""


# Errors that mean "your input is wrong", printed without a traceback.
_INPUT_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, PermissionError, ValueError, KeyError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bert4ray", description="Train, tune and serve BERT/UniLM-family transformers on Ray.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print("bert4ray: interrupted", file=sys.stderr)
        return 130
    except _INPUT_ERRORS as exc:
        if os.environ.get("BERT4RAY_DEBUG"):
            traceback.print_exc()
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"bert4ray {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
