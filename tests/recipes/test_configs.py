"""Every shipped recipe loads, validates, and documents the command that runs it."""

from pathlib import Path

import pytest

from pipelines.recipe import load_recipe, to_dict

RECIPES = sorted((Path(__file__).resolve().parents[2] / "pipelines" / "recipes").glob("*.yaml"))


def test_recipes_are_shipped():
    assert {p.name for p in RECIPES} >= {"mlm-tiny.yaml", "classify-tiny.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    # A round trip through plain data gives the same recipe.
    assert to_dict(load_recipe(data=to_dict(recipe))) == to_dict(recipe)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_starts_with_its_command(path):
    head = path.read_text(encoding="utf-8").splitlines()[:6]
    assert head[0].startswith("#")
    assert any(f"bert4ray train pipelines/recipes/{path.name}" in line for line in head)
    assert any("--set" in line for line in head), "an override example is missing"
