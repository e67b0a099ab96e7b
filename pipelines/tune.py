"""`bert4ray tune`: a Ray Tune search over decoding settings or training-recipe settings, scored by
BLEU / F1 on a dev set (or by a training evaluation metric), tracked in MLflow.

    from pipelines.tune import run_tune
    from pipelines.tune_recipe import load_tune_recipe
    result = run_tune(load_tune_recipe("pipelines/recipes/tune-simbert-decoding.yaml"))
    result.best.config, result.best.score, result.default, result.best_file, result.parent_run_id

Two modes:
- `decoding`: every trial decodes the dev set with a trained model (`GenerationSystem`, bert4ray's
  own decoder) under `base` + the sampled settings and scores it (`pipelines.objectives.score`).
  The `base` settings alone (the defaults) are evaluated once more, outside the trial budget.
- `training`: every trial is a driver function that launches a Ray Train run of the training recipe
  with the sampled values as `--set` overrides (`run_training`), reporting each intermediate
  evaluation to Tune, so ASHA can stop poor trials early. The recipe's own values are trial 0 when
  they lie inside the space.

Searchers (all derivative-free): `random` (Tune's variant generator), `optuna` (TPE), `nevergrad`
(any optimizer of its registry: OnePlusOne, CMA, TwoPointsDE, NGOpt, ...), limited to
`search.max_concurrent` trials at a time. MLflow: one parent run for the search, one child run per
trial (tag `mlflow.parentRunId`). Output, under `<workdir>/tune/<name>/` (or `output.dir`):
`best.yaml` (decoding: a tune recipe whose `base` holds the best settings and whose space is empty,
so `bert4ray tune best.yaml` re-scores them; training: a full training recipe for `bert4ray train`),
`decoding.json` (decoding mode: the settings alone) and `trials.json`.

This module runs the search; the trials are in pipelines.tune_trials, the searchers and ASHA in
pipelines.tune_schedulers, MLflow in pipelines.tune_tracking, the records and output files in
pipelines.tune_results.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

from pipelines.job import new_run_id
from pipelines.storage import job_output, publish_output
from pipelines.tune_recipe import (
    Param,
    TuneRecipe,
    base_training_recipe,
    check_paths,
    objective_mode,
    space_params,
)
from pipelines.tune_results import (
    TrialRecord,
    TuneResult,
    choose_best,
    search_summary,
    trial_records,
    write_outputs,
)
from pipelines.tune_schedulers import StopBoard, graceful_asha, make_searcher
from pipelines.tune_tracking import SearchTracking, resolved, trial_events
from pipelines.tune_trials import decoding_trial, evaluate_decoding, training_trial

__all__ = ["TrialRecord", "TuneResult", "run_tune"]


def run_tune(recipe: TuneRecipe, progress: bool = True, log=print) -> TuneResult:
    """Run the search; write best.yaml, decoding.json (decoding mode) and trials.json."""
    from pipelines.tracking import tracked_run
    say = log if progress else None
    model_dir = check_paths(recipe)            # a decoding search's model as a directory
    params = space_params(recipe)
    result = TuneResult(metric=recipe.objective.metric, mode=objective_mode(recipe))
    workdir = Path(recipe.workdir).expanduser().resolve()
    result.output_dir, publish_to = job_output(recipe.output.dir, workdir / "tune" / recipe.name)
    result.output_dir = result.output_dir.resolve()
    training = base_training_recipe(recipe) if recipe.mode == "training" else None
    tracking = SearchTracking(recipe, workdir)      # the DB and experiment exist before any trial runs
    _start_ray(recipe, training)
    tags = {"bert4ray.task": "tune", "bert4ray.tune.mode": recipe.mode}
    with tracked_run(recipe.tracking, workdir, new_run_id(recipe.name, with_pid=False), resolved(recipe),
                     tags) as parent:
        tracking.parent, result.parent_run_id = parent, parent.run_id
        spec = _trial_spec(recipe, workdir, model_dir, parent.run_id)
        points = _default_settings(recipe, params, training, spec, tracking, result, say)
        if not params:
            result.chosen = dict(recipe.base)
            result.note = "the space is empty: only the base settings were scored"
            parent.log_metrics({f"default_{k}": v for k, v in (result.default or {}).items()})
            return result
        result.trials = _run_trials(recipe, params, training, spec, tracking, result, points, say)
        choose_best(result, recipe)
        files = write_outputs(result, recipe, workdir, result.output_dir)
        parent.log_metrics(search_summary(result))
        for f in files:
            parent.log_artifact(f)
    publish_output(result.output_dir, publish_to)
    result.published = publish_to
    return result


def _start_ray(recipe: TuneRecipe, training) -> None:
    """A Ray with the CPUs of `max_concurrent` trials: a training trial's driver, its Train workers
    and one CPU for Ray Data."""
    from pipelines.train import init_ray
    s = recipe.search
    if training is not None:
        per_trial = s.cpus_per_trial + training.scaling.num_workers * training.scaling.cpus_per_worker + 1
    else:
        per_trial = s.cpus_per_trial
    init_ray(max(os.cpu_count() or 1, math.ceil(per_trial * s.max_concurrent)),
             use_gpu=training is not None and training.scaling.use_gpu)


def _trial_spec(recipe: TuneRecipe, workdir: Path, model_dir: Path | None, parent_run_id: str | None) -> dict:
    """What a trial needs from the tune recipe, as plain values with absolute paths (trials run in
    Tune's trial directories, possibly on other nodes)."""
    return {"name": recipe.name, "cwd": os.getcwd(), "metric": recipe.objective.metric, "base": dict(recipe.base),
            "dev_file": _absolute(recipe.dev.file) if recipe.dev.file else None,
            "max_rows": recipe.dev.max_rows, "threads": max(1, int(recipe.search.cpus_per_trial)),
            "parent_run_id": parent_run_id, "experiment": recipe.tracking.experiment,
            "workdir": str(workdir), "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI"),
            "model": str(model_dir.resolve()) if model_dir else None,
            "recipe": str(Path(recipe.recipe).resolve()) if recipe.recipe else None,
            "overrides": list(recipe.overrides)}


def _default_settings(recipe: TuneRecipe, params: list[Param], training, spec: dict, tracking: SearchTracking,
                      result: TuneResult, say) -> list[dict] | None:
    """The default settings: decoding mode scores `base` alone now (result.default); training mode
    returns the recipe's own values as the first point to evaluate, when they lie inside the space."""
    if recipe.mode == "decoding":
        if recipe.search.include_default or not params:
            _score_default_decoding(recipe, spec, tracking, result, say)
        return None
    if not recipe.search.include_default:
        return None
    from pipelines.recipe import get_value
    defaults = {p.key: get_value(training, p.key) for p in params}
    outside = [p.key for p in params if not p.contains(defaults[p.key])]
    if outside:
        result.note = f"the recipe's own value of {', '.join(outside)} lies outside the space: no default trial"
        return None
    return [defaults]


def _score_default_decoding(recipe: TuneRecipe, spec: dict, tracking: SearchTracking, result: TuneResult,
                            say) -> None:
    """Score the `base` settings alone, outside the trial budget, as an MLflow child run `default`."""
    import ray
    if say:
        say("scoring the default settings (base) ...")
    remote = ray.remote(evaluate_decoding).options(num_cpus=recipe.search.cpus_per_trial)
    result.default = ray.get(remote.remote(spec, dict(recipe.base)))
    child = tracking.child("default", "default", dict(recipe.base), {"bert4ray.tune.default": "true"})
    if child:
        tracking.log_metrics(child, {k: result.default[k] for k in ("bleu", "f1")})
        tracking.end_child("default")
    if say:
        say(f"default settings: {result.metric} {result.default[result.metric]:.4f}")


def _run_trials(recipe: TuneRecipe, params: list[Param], training, spec: dict, tracking: SearchTracking,
                result: TuneResult, points: list[dict] | None, say) -> list[TrialRecord]:
    """Run the trials on Ray Tune and return their records."""
    import ray

    from pipelines.train import on_this_node
    search = make_searcher(recipe, params, result.metric, result.mode, points)
    board = None
    if recipe.scheduler.name == "asha":
        board = ray.remote(StopBoard).options(**on_this_node()).remote()
        spec["stop_board"] = board
    tuner = _tuner(recipe, training, spec, search, board, trial_events(tracking, result, recipe, say))
    try:
        with _quiet_tune():
            grid = tuner.fit()
    finally:
        if board is not None:
            ray.kill(board)
    stopped = tracking.end_orphans()
    records = trial_records(grid, recipe, result.metric, points)
    early = sum(t.status == "stopped" for t in records)
    if (early or stopped) and say:
        say(f"{early} trial(s) stopped early by ASHA")
    return records


def _tuner(recipe: TuneRecipe, training, spec: dict, search: tuple, board, events):
    """The Tuner: the trial function with its resources, `search` (search_alg, param_space) and
    ASHA asking `board` to stop trials (FIFO when there is no board)."""
    from ray import tune
    s, (search_alg, param_space) = recipe.search, search
    scheduler = None
    if board is not None:
        sc = recipe.scheduler
        scheduler = graceful_asha(board, time_attr="step", max_t=sc.max_t or training.schedule.max_steps or 10**9,
                                  grace_period=sc.grace_period or training.schedule.eval_every,
                                  reduction_factor=sc.reduction_factor)
    trial_fn = decoding_trial if recipe.mode == "decoding" else training_trial
    trainable = tune.with_resources(tune.with_parameters(trial_fn, spec=spec), {"cpu": s.cpus_per_trial})
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=recipe.objective.metric, mode=objective_mode(recipe), search_alg=search_alg,
            scheduler=scheduler, num_samples=s.num_samples, time_budget_s=s.time_budget_s or None,
            reuse_actors=recipe.mode == "decoding",
            trial_name_creator=lambda t: t.trial_id, trial_dirname_creator=lambda t: t.trial_id),
        run_config=tune.RunConfig(
            name=new_run_id(recipe.name, with_pid=False),
            storage_path=str(Path(spec["workdir"]) / "ray-tune"), verbose=0, callbacks=[events],
            # A failing training trial (e.g. an objective the task does not report) most likely
            # fails them all, and each costs a training run: stop at the first.
            failure_config=tune.FailureConfig(fail_fast=recipe.mode == "training")))


@contextlib.contextmanager
def _quiet_tune():
    """Tune's own console output (experiment banner, result-file notices) stays off: bert4ray prints
    its progress lines and the trial table. Its legacy reporter at verbose=0 prints nothing."""
    import logging
    previous = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    tune_logger = logging.getLogger("ray.tune")
    level = tune_logger.level
    tune_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        tune_logger.setLevel(level)
        if previous is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = previous


def _absolute(location: str) -> str:
    """A local path made absolute (trials run in other directories); a URI as it is."""
    from components.objectstore import is_remote
    return location if is_remote(location) else str(Path(location).expanduser().resolve())
