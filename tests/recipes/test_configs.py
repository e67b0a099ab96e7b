"""Every shipped recipe loads, validates, and documents the command that runs it."""

from pathlib import Path

import pytest

from pipelines.mgs import load_mgs_recipe
from pipelines.probe import load_probe_recipe
from pipelines.recipe import load_recipe, to_dict
from pipelines.tune_recipe import load_tune_recipe

RECIPES = sorted((Path(__file__).resolve().parents[2] / "pipelines" / "recipes").glob("*.yaml"))
# The command a recipe's header names decides which recipe type it is.
LOADERS = {"train": load_recipe, "probe": load_probe_recipe, "mgs": load_mgs_recipe, "tune": load_tune_recipe}


def command_of(path: Path) -> str:
    head = path.read_text(encoding="utf-8").splitlines()[:6]
    found = [cmd for cmd in LOADERS if any(f"bert4ray {cmd} pipelines/recipes/{path.name}" in line for line in head)]
    assert len(found) == 1, f"{path.name}: the header must give `bert4ray <{'|'.join(LOADERS)}> pipelines/recipes/{path.name}`"
    return found[0]


def test_recipes_are_shipped():
    assert {p.name for p in RECIPES} >= {"mlm-tiny.yaml", "classify-tiny.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates(path):
    load = LOADERS[command_of(path)]
    recipe = load(path)
    assert recipe.name == path.stem
    # A round trip through plain data gives the same recipe.
    assert to_dict(load(data=to_dict(recipe))) == to_dict(recipe)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_starts_with_its_command(path):
    head = path.read_text(encoding="utf-8").splitlines()[:6]
    assert head[0].startswith("#")
    assert command_of(path) in LOADERS
    assert any("--set" in line for line in head), "an override example is missing"
