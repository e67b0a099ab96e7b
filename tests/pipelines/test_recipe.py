"""Recipe loading, overrides and errors (no Ray)."""

import pytest

from pipelines.recipe import RecipeError, flatten, load_recipe, to_dict

BASE = {"data": {"train": ["x.jsonl"]}}


def test_defaults_and_typed_overrides():
    r = load_recipe(data=BASE, overrides=["optim.lr=2e-3", "optim.batch_size=8", "model.attention=linear",
                                          "data.strict=true", "optim.betas=[0.8, 0.9]", "task.whole_word=yes"])
    assert r.optim.lr == pytest.approx(2e-3) and isinstance(r.optim.lr, float)
    assert r.optim.batch_size == 8 and r.model.attention == "linear" and r.data.strict is True
    assert r.optim.betas == [0.8, 0.9] and r.task.options.whole_word is True
    assert r.model.init_from is None
    assert load_recipe(data=BASE, overrides=["model.init_from=some/dir"]).model.init_from == "some/dir"
    assert load_recipe(data=BASE, overrides=["model.init_from=none"]).model.init_from is None


def test_task_options_follow_the_task():
    r = load_recipe(data={**BASE, "task": {"name": "classify", "labels": ["a", "b"]}})
    assert r.task.name == "classify" and r.task.options.labels == ["a", "b"]
    assert to_dict(r)["task"] == {"name": "classify", "text_field": "text", "pair_field": None,
                                  "label_field": "label", "labels": ["a", "b"], "attribution_samples": 16}
    assert flatten(to_dict(r))["task.labels"] == ["a", "b"]


@pytest.mark.parametrize("overrides, message", [
    (["optim.lrr=1"], "unknown recipe key 'optim.lrr'; did you mean 'optim.lr'?"),
    (["optimm.lr=1"], "unknown recipe key 'optimm'; did you mean 'optim'?"),
    (["task.mask_prb=0.1"], "did you mean 'task.mask_prob'?"),
    (["optim.batch_size=0.5"], "recipe key 'optim.batch_size' must be int, got 0.5"),
    (["optim.batch_size=0"], "'optim.batch_size' must be > 0"),
    (["data.strict=maybe"], "recipe key 'data.strict' must be bool"),
    (["model.attention=lin"], "did you mean 'linear'?"),
    (["task.name=mln"], "unknown task 'mln' (did you mean 'mlm'?)"),
    (["task.mask_prob=1.5"], "mask_prob must be in (0, 1)"),
    (["deepspeed.precision=fp16"], "'deepspeed.precision'"),
    (["optim.lr"], "must look like section.key=value"),
    (["optim.lr.x=1"], "recipe key 'optim.lr' must be float"),
])
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(RecipeError) as info:
        load_recipe(data=BASE, overrides=overrides)
    assert message in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
    bad.write_text("optim: 3\n")
    with pytest.raises(RecipeError, match="'optim' must be a section"):
        load_recipe(bad)
    bad.write_text("optim:\n  lr: 0.1\n")
    with pytest.raises(RecipeError, match="'optim.lr' is a value, not a section"):
        load_recipe(bad, ["data.train=a.jsonl", "optim.lr.x=1"])
    with pytest.raises(RecipeError, match="data.train"):
        load_recipe(data={"data": {"source": "files"}})


def test_recipe_from_environment_variable(monkeypatch, tmp_path):
    """`env:NAME` reads the YAML text from a variable (how `bert4ray submit` ships a recipe to a job);
    a dumped recipe loads back equal, and the errors name the variable."""
    from pipelines.recipe import dump_recipe

    original = load_recipe(data={**BASE, "task": {"name": "classify", "labels": ["a", "b"]},
                                 "regularizers": {"noise_std": 0.01}}, overrides=["optim.lr=2e-3"])
    dump_recipe(original, tmp_path / "r.yaml")
    monkeypatch.setenv("B4R_TEST_RECIPE", (tmp_path / "r.yaml").read_text(encoding="utf-8"))
    loaded = load_recipe("env:B4R_TEST_RECIPE", ["optim.batch_size=8"])
    assert to_dict(loaded) == {**to_dict(original), "optim": {**to_dict(original)["optim"], "batch_size": 8}}

    monkeypatch.delenv("B4R_TEST_RECIPE")
    with pytest.raises(RecipeError, match="recipe environment variable 'B4R_TEST_RECIPE' is not set"):
        load_recipe("env:B4R_TEST_RECIPE")
    with pytest.raises(RecipeError, match="names no environment variable"):
        load_recipe("env:")
    monkeypatch.setenv("B4R_TEST_RECIPE", "optim: [1, 2\n")
    with pytest.raises(RecipeError, match=r"recipe in \$B4R_TEST_RECIPE: not valid YAML"):
        load_recipe("env:B4R_TEST_RECIPE")
    monkeypatch.setenv("B4R_TEST_RECIPE", "optim:\n  lrr: 1\n")
    with pytest.raises(RecipeError, match="did you mean 'optim.lr'"):
        load_recipe("env:B4R_TEST_RECIPE")


def test_deepspeed_accelerator_follows_the_recipe_unless_set(monkeypatch):
    from pipelines.train import deepspeed_accelerator
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    assert deepspeed_accelerator(use_gpu=True) == "cuda"        # a local GPU run is not forced onto cpu
    assert deepspeed_accelerator(use_gpu=False) == "cpu"
    monkeypatch.setenv("DS_ACCELERATOR", "xpu")
    assert deepspeed_accelerator(use_gpu=True) == "xpu"
