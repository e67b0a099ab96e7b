"""What the recipe-driven commands (`train`, `tune`, `mgs`, `probe`) share on the command line.

    def add_arguments(parser):
        add_recipe_arguments(parser, "MGS recipe YAML (see ...)", example="mgs.beta=10")

    def run(args):
        recipe = load_command_recipe(args, load_mgs_recipe)
        if print_config(args, recipe):
            return 0
        ...

A recipe error is a RecipeError, an input error that `pipelines.cli` prints as one line (exit 2):
commands let it through. This module stays light: `bert4ray --help` imports every command.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any


def add_recipe_arguments(parser, recipe_help: str, example: str, progress: str = "no progress lines") -> None:
    """The recipe file and --set / --overlay / --print-config / --quiet. `example`: a KEY=VALUE
    for --set's help; `progress`: what --quiet turns off."""
    parser.add_argument("recipe", help=recipe_help)
    add_override_arguments(parser, example)
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved recipe (overlays and --set applied) as YAML and exit")
    parser.add_argument("--quiet", action="store_true", help=progress)


def add_override_arguments(parser, example: str | None = None) -> None:
    """--set KEY=VALUE and --overlay FILE, both repeatable (`bert4ray submit` takes these too)."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a recipe value{f', e.g. --set {example}' if example else ''} (repeatable)")
    parser.add_argument("--overlay", action="append", default=[], metavar="FILE",
                        help="recipe YAML merged over the recipe, e.g. cluster/deepspeed/zero2-gpu.yaml (repeatable)")


def load_command_recipe(args, load: Callable[..., Any], extra: list[str] = ()):
    """The recipe of a command: its file, the --overlay files merged over it (in order), then the
    --set overrides and `extra` ones; `load(path, overrides, data=...)` is the job's loader."""
    from pipelines.sections import read_overlays
    return load(args.recipe, [*args.overrides, *extra], data=read_overlays(args.overlay))


def print_config(args, recipe) -> bool:
    """With --print-config, print the resolved recipe as YAML: True when the command is done."""
    if not getattr(args, "print_config", False):
        return False
    from pipelines.sections import to_yaml
    print(to_yaml(recipe), end="")
    return True


def new_run_id(name: str, with_pid: bool = True) -> str:
    """`<name>-<YYYYmmdd-HHMMSS>[-<pid>]`: the id of a run, its directory and MLflow run name."""
    stamp = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return f"{stamp}-{os.getpid()}" if with_pid else stamp
