"""The scaffold every recipe command shares: --set / --overlay / --print-config, the recipe error as
an input error, field choices and bounds, the job's MLflow run and its end status (no Ray)."""

import contextlib

import pytest
import yaml

from pipelines.cli import UserError, main
from pipelines.recipe import RecipeError, load_recipe
from pipelines.sections import TrackingSection, load_sections, tracking_field

RECIPES = {"train": "pipelines/recipes/mlm-tiny.yaml", "mgs": "pipelines/recipes/mgs-simbert.yaml",
           "probe": "pipelines/recipes/probe-tiny.yaml", "tune": "pipelines/recipes/tune-simbert-decoding.yaml"}


@pytest.mark.parametrize("command", sorted(RECIPES))
def test_print_config_prints_the_resolved_recipe(command, tmp_path, capsys):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("name: from-overlay\nworkdir: w1\n", encoding="utf-8")
    code = main([command, RECIPES[command], "--overlay", str(overlay), "--set", "workdir=w2", "--print-config"])
    assert code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["name"] == "from-overlay" and printed["workdir"] == "w2"     # --set wins over the overlay
    assert printed["tracking"]["enabled"] in (True, False)


def test_recipe_errors_are_input_errors(tmp_path, capsys):
    assert issubclass(RecipeError, UserError) and issubclass(RecipeError, ValueError)
    assert main(["train", RECIPES["train"], "--set", "regularizers.noise_std=-1", "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("bert4ray train: error: recipe section 'regularizers': regularizers.noise_std must be a "
                   "number >= 0, got -1.0")
    assert main(["mgs", RECIPES["mgs"], "--overlay", str(tmp_path / "none.yaml")]) == 2
    assert "overlay file" in capsys.readouterr().err


def test_choices_bounds_and_section_defaults():
    with pytest.raises(RecipeError, match=r"'schedule.decay' has value 'cosin' \(did you mean 'cosine'\?\)"):
        load_recipe(data={"data": {"train": ["x.jsonl"]}}, overrides=["schedule.decay=cosin"])
    with pytest.raises(RecipeError, match="'data.source' has value 'taobao2'.*valid: files, peoples-daily"):
        load_recipe(data={"data": {"train": ["x.jsonl"]}}, overrides=["data.source=taobao2"])
    from dataclasses import dataclass

    @dataclass
    class Job:
        tracking: TrackingSection = tracking_field("bert4ray-x")

    # A tracking section given in YAML keeps the job's own experiment name.
    assert load_sections(Job, data={"tracking": {"run_name": "r"}}).tracking.experiment == "bert4ray-x"
    parsed = load_recipe(data={"data": {"train": ["x.jsonl"]}}, overrides=["deepspeed.extra.zero_allow=true"])
    assert parsed.deepspeed.extra == {"zero_allow": True}         # command-line text parsed as YAML


def test_task_attributes_say_which_tasks_generate():
    from pipelines.tasks import get_task, task_is, tasks_where
    assert tasks_where("generates") == ["dialog", "simbert"] and tasks_where("causal") == ["dialog"]
    assert get_task("simbert").generates and not get_task("simbert").causal
    assert not task_is("classify", "generates") and not task_is("no-such-task", "generates")


@pytest.mark.parametrize("raised, status", [(None, "FINISHED"), (RuntimeError("boom"), "FAILED"),
                                            (KeyboardInterrupt(), "KILLED")])
def test_tracked_run_ends_with_the_status_of_the_block(raised, status, tmp_path, monkeypatch):
    import mlflow

    from pipelines.tracking import tracked_run
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recipe = load_recipe(data={"data": {"train": ["x.jsonl"]}})
    expect = pytest.raises(type(raised)) if raised else contextlib.nullcontext()
    with expect, tracked_run(TrackingSection(experiment="t"), tmp_path, "job-1", recipe, {"bert4ray.command": "t"}) as run:
        run.log_metrics({"loss": 1.5, "skipped": float("nan")}, step=1)
        if raised:
            raise raised
    got = mlflow.get_run(run.run_id)
    assert got.info.status == status and got.data.params["optim.lr"] == "0.0005"
    assert got.data.metrics == {"loss": 1.5} and got.data.tags["bert4ray.command"] == "t"
    assert ("bert4ray.error" in got.data.tags) == (status != "FINISHED")
    with tracked_run(TrackingSection(enabled=False), tmp_path, "job-2", recipe) as off:
        off.log_metrics({"loss": 1.0})
    assert off.run_id is None

