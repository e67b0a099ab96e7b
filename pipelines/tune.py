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
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipelines.tune_recipe import (
    DECODING_METRICS,
    Param,
    TuneRecipe,
    base_training_recipe,
    check_paths,
    objective_mode,
    override_text,
    space_params,
)

# --- trials (run in Ray workers) -------------------------------------------------------------------
_CACHE: dict = {}


def _enter(spec: dict) -> None:
    """Trials run in Tune's trial directory: go back to where the recipe's relative paths point."""
    if spec.get("cwd") and Path(spec["cwd"]).is_dir():
        os.chdir(spec["cwd"])
    if spec.get("tracking_uri"):
        os.environ["MLFLOW_TRACKING_URI"] = spec["tracking_uri"]


def _decoding_system(spec: dict):
    from pipelines.objectives import GenerationSystem, read_examples
    key = (spec["model"], spec["dev_file"], spec["max_rows"])
    if _CACHE.get("key") != key:      # a reused trial actor keeps its model and examples
        _CACHE.clear()
        _CACHE.update(key=key, system=GenerationSystem.from_pretrained(spec["model"]),
                      examples=read_examples(spec["dev_file"], spec["max_rows"]))
    return _CACHE["system"], _CACHE["examples"]


def evaluate_decoding(spec: dict, settings: dict) -> dict:
    """Decode the dev set with `settings` and score it: {"bleu", "f1", "examples"}."""
    import torch

    from pipelines.objectives import score
    _enter(spec)
    torch.set_num_threads(max(1, int(spec.get("threads", 1))))
    system, examples = _decoding_system(spec)
    hyps = system.decode(examples, settings)
    refs = [e.references for e in examples]
    return {"bleu": score("bleu", hyps, refs), "f1": score("f1", hyps, refs), "examples": len(examples)}


def decoding_trial(config: dict, spec: dict) -> None:
    """A Tune trial: the base settings plus the sampled ones, scored on the dev set."""
    from ray import tune
    tune.report(evaluate_decoding(spec, {**spec["base"], **config}))


def trial_overrides(spec: dict, config: dict) -> list[str]:
    return [*spec["overrides"], *(f"{k}={override_text(v)}" for k, v in config.items())]


def training_trial(config: dict, spec: dict) -> None:
    """A Tune trial that is a Ray Train driver: it trains the recipe with the sampled values,
    reports every intermediate evaluation of the objective (ASHA decides on these), then the
    final objective (dev BLEU / F1 of the exported model, or the final evaluation)."""
    from ray import tune

    from pipelines.recipe import load_recipe
    from pipelines.train import run_training

    _enter(spec)
    trial_id = tune.get_context().get_trial_id()
    extra = [f"name={spec['name']}-{trial_id}", f"workdir={spec['workdir']}", "tracking.registered_model=null"]
    if spec["parent_run_id"]:
        extra += [f"tracking.parent_run_id={spec['parent_run_id']}", f"tracking.experiment={spec['experiment']}",
                  f"tracking.run_name=trial-{trial_id}"]
    else:
        extra.append("tracking.enabled=false")
    recipe = load_recipe(spec["recipe"], trial_overrides(spec, config) + extra)
    metric = spec["metric"]
    board = spec.get("stop_board")
    should_stop = functools.partial(stop_requested, board, trial_id) if board is not None else None

    def on_record(record: dict) -> None:
        # The final evaluation is reported after the export below (ASHA stops a trial at max_t).
        if metric in record and record["step"] < record["total"] and not (should_stop and should_stop()):
            tune.report({metric: float(record[metric]), "step": int(record["step"]), "total": int(record["total"]),
                         **{k: float(v) for k, v in record.items() if k.startswith("eval_")}})

    result = run_training(recipe, progress=False, on_record=on_record, should_stop=should_stop)
    if result.model_dir is None:        # ASHA gave up on this trial: its Train run ended early
        if result.mlflow_run_id:
            from mlflow.tracking import MlflowClient
            client = MlflowClient()
            client.set_tag(result.mlflow_run_id, "bert4ray.tune.trial_id", trial_id)
            client.set_tag(result.mlflow_run_id, "bert4ray.tune.stopped",
                           f"stopped early by ASHA at step {int(result.metrics.get('step', 0))}")
        return
    final = {k: float(v) for k, v in result.metrics.items() if k.startswith("eval_") and _number(v)}
    if metric in DECODING_METRICS:
        import torch

        from pipelines.objectives import GenerationSystem, read_examples
        torch.set_num_threads(max(1, int(spec.get("threads", 1))))
        system = GenerationSystem.from_pretrained(result.model_dir)
        examples = read_examples(spec["dev_file"], spec["max_rows"])
        final[metric] = system.evaluate(examples, metric, spec["base"])
        if result.mlflow_run_id:
            from mlflow.tracking import MlflowClient
            MlflowClient().log_metric(result.mlflow_run_id, f"dev_{metric}", final[metric])
    if metric not in final:
        raise ValueError(f"the training run reported no '{metric}'; its evaluation gave: "
                         f"{', '.join(sorted(final)) or 'nothing (no validation rows?)'}")
    if result.mlflow_run_id:
        from mlflow.tracking import MlflowClient
        MlflowClient().set_tag(result.mlflow_run_id, "bert4ray.tune.trial_id", trial_id)
    total = int(result.metrics.get("step", 0)) or max([int(h.get("total", 0)) for h in result.history] or [0])
    tune.report({**final, "step": total, "total": total, "finished": 1, "model_dir": str(result.model_dir),
                 "mlflow_run_id": result.mlflow_run_id or ""})


class StopBoard:
    """Trials that the scheduler gave up on (a Ray actor): their Train runs ask it and end
    themselves, so no Train run is killed (a killed Train controller leaves its workers' placement
    group reserved when the Ray State API is off, as with include_dashboard=False)."""

    def __init__(self):
        self.stopping: set[str] = set()

    def request(self, trial_id: str) -> None:
        self.stopping.add(trial_id)

    def requested(self, trial_id: str) -> bool:
        return trial_id in self.stopping


def stop_requested(board, trial_id: str) -> bool:
    import ray
    try:
        return bool(ray.get(board.requested.remote(trial_id), timeout=30))
    except Exception:  # noqa: BLE001 - a lost board must not end a trial
        return False


def _asha(board, **kwargs):
    """ASHA whose STOP is a request: the trial ends its own Train run at the next logging or
    evaluation step (see StopBoard); later results of that trial no longer count."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class GracefulASHA(ASHAScheduler):
        def __init__(self, board, **kwargs):
            super().__init__(**kwargs)
            self.board, self.stopping = board, set()

        def on_trial_result(self, tune_controller, trial, result):
            if trial.trial_id in self.stopping:
                return TrialScheduler.CONTINUE
            action = super().on_trial_result(tune_controller, trial, result)
            if action == TrialScheduler.STOP and not result.get("finished"):
                self.stopping.add(trial.trial_id)
                self.board.request.remote(trial.trial_id)
                return TrialScheduler.CONTINUE
            return action

    return GracefulASHA(board, **kwargs)


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))


# --- the driver -------------------------------------------------------------------------------------
@dataclass
class TrialRecord:
    trial_id: str
    config: dict
    metrics: dict
    status: str
    """`done`, `stopped` (early, by ASHA) or `error`."""
    score: float | None = None
    error: str | None = None
    default: bool = False
    """These are the default settings (training mode: the recipe's own values)."""


@dataclass
class TuneResult:
    metric: str
    mode: str
    trials: list[TrialRecord] = field(default_factory=list)
    best: TrialRecord | None = None
    """The best trial that ran to the end."""
    default: dict | None = None
    """Decoding mode: scores of the `base` settings alone ({"bleu", "f1", "examples"})."""
    chosen: dict = field(default_factory=dict)
    """Decoding: the settings written to best.yaml (base + best trial, or base if no trial beat it).
    Training: the best trial's values of the searched keys."""
    best_file: Path | None = None
    output_dir: Path | None = None
    parent_run_id: str | None = None
    kept_default: bool = False
    """Decoding: no trial beat the default settings, so best.yaml holds `base` unchanged."""
    note: str = ""

    def better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b


class _Tracking:
    """The parent run (driver) and, in decoding mode, one child run per trial, all written from the
    driver with an MlflowClient (training trials open their own child runs via run_training)."""

    def __init__(self, recipe: TuneRecipe, workdir: Path):
        self.enabled = recipe.tracking.enabled
        self.run_id: str | None = None
        self.children: dict[str, str] = {}
        if not self.enabled:
            return
        from mlflow.tracking import MlflowClient

        from pipelines.tracking import tracking_uri, use_experiment
        self.experiment_id = use_experiment(workdir, recipe.tracking.experiment)
        self.client = MlflowClient(tracking_uri(workdir))

    def start(self, recipe: TuneRecipe, params: list[Param]) -> None:
        if not self.enabled:
            return
        from pipelines.tracking import run_tags
        tags = run_tags({"bert4ray.task": "tune", "bert4ray.tune.mode": recipe.mode})
        name = recipe.tracking.run_name or f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        values = {"mode": recipe.mode, "model": recipe.model, "recipe": recipe.recipe,
                  "overrides": " ".join(recipe.overrides), "dev.file": recipe.dev.file,
                  "dev.max_rows": recipe.dev.max_rows, "objective.metric": recipe.objective.metric,
                  "objective.mode": objective_mode(recipe),
                  **{f"search.{k}": v for k, v in dataclasses.asdict(recipe.search).items()},
                  **{f"scheduler.{k}": v for k, v in dataclasses.asdict(recipe.scheduler).items()},
                  **{f"base.{k}": v for k, v in recipe.base.items()},
                  **{f"space.{p.key}": json.dumps({p.kind: p.values}) for p in params}}
        self.log_params(self.run_id, values)

    def log_params(self, run_id: str, values: dict) -> None:
        from mlflow.entities import Param as MlflowParam

        from pipelines.tracking import param_value
        self.client.log_batch(run_id, params=[MlflowParam(k, param_value(v)) for k, v in values.items()])

    def log_metrics(self, run_id: str, values: dict, step: int = 0) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if _number(v)]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    def child(self, key: str, name: str, params: dict, tags: dict | None = None) -> str | None:
        if not (self.enabled and self.run_id):
            return None
        run = self.client.create_run(self.experiment_id, run_name=name, tags={
            "mlflow.parentRunId": self.run_id, "bert4ray.task": "tune-trial", **(tags or {})})
        self.children[key] = run.info.run_id
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def end_child(self, key: str, status: str = "FINISHED", error: str | None = None) -> None:
        run_id = self.children.get(key)
        if run_id:
            if error:
                self.client.set_tag(run_id, "bert4ray.error", error[:5000])
            self.client.set_terminated(run_id, status)

    def end_orphans(self) -> int:
        """Child runs left RUNNING by trials that ASHA stopped (their process was ended): KILLED."""
        if not (self.enabled and self.run_id):
            return 0
        runs = self.client.search_runs([self.experiment_id], filter_string=(
            f"tags.mlflow.parentRunId = '{self.run_id}' and attributes.status = 'RUNNING'"))
        for run in runs:
            self.client.set_tag(run.info.run_id, "bert4ray.tune.stopped", "stopped early by the scheduler")
            self.client.set_terminated(run.info.run_id, "KILLED")
        return len(runs)

    def finish(self, metrics: dict, files: list[Path]) -> None:
        if not (self.enabled and self.run_id):
            return
        self.log_metrics(self.run_id, metrics)
        for f in files:
            self.client.log_artifact(self.run_id, str(f))
        self.client.set_terminated(self.run_id, "FINISHED")

    def fail(self, exc: BaseException) -> None:
        if self.enabled and self.run_id:
            try:
                self.client.set_tag(self.run_id, "bert4ray.error", f"{type(exc).__name__}: {exc}"[:5000])
            finally:
                self.client.set_terminated(self.run_id, "FAILED")


def _callback(tracking: _Tracking, result: TuneResult, recipe: TuneRecipe, progress):
    """Tune callback on the driver: decoding trials' child runs, and a line per finished trial.
    Tune pickles its callbacks with the experiment state: the MLflow client and the console stay out
    of the pickle (a module-level class, so no closure carries them either)."""
    from ray.tune import Callback

    class TrialEvents(_TrialEvents, Callback):
        pass

    return TrialEvents(tracking, progress, result.metric, result.mode, recipe.mode == "decoding",
                       dict(recipe.base), recipe.search.num_samples)


class _TrialEvents:
    def __init__(self, tracking, progress, metric: str, mode: str, decoding: bool, base: dict, total: int):
        self.tracking, self.progress = tracking, progress
        self.metric, self.mode, self.decoding, self.base, self.total = metric, mode, decoding, base, total
        self.done, self.best = 0, None

    def __getstate__(self):
        return {**self.__dict__, "tracking": None, "progress": None}

    def on_trial_start(self, iteration, trials, trial, **info):
        if self.decoding and self.tracking:
            self.tracking.child(trial.trial_id, f"trial-{trial.trial_id}", {**self.base, **trial.config},
                                {"bert4ray.tune.trial_id": trial.trial_id})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.decoding and self.tracking and trial.trial_id in self.tracking.children:
            self.tracking.log_metrics(self.tracking.children[trial.trial_id],
                                      {k: result[k] for k in ("bleu", "f1") if k in result})

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.tracking:
            self.tracking.end_child(trial.trial_id)
        self.done += 1
        value = (trial.last_result or {}).get(self.metric)
        if _number(value) and (self.best is None or (value > self.best if self.mode == "max" else value < self.best)):
            self.best = value
        if self.progress:
            shown = f"{self.metric} {value:.4f}" if _number(value) else "no score"
            best = f"(best {self.best:.4f})" if self.best is not None else ""
            self.progress(f"trial {self.done}/{self.total} {trial.trial_id}: {shown} {best}")

    def on_trial_error(self, iteration, trials, trial, **info):
        if self.tracking:
            self.tracking.end_child(trial.trial_id, "FAILED", str(getattr(trial, "error_msg", None) or "error"))
        self.done += 1
        if self.progress:
            self.progress(f"trial {self.done}/{self.total} {trial.trial_id}: failed")


def _searcher(recipe: TuneRecipe, params: list[Param], metric: str, mode: str, points: list[dict] | None):
    """(search_alg, param_space for the Tuner)."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    s = recipe.search
    space = {p.key: p.domain() for p in params}
    if s.searcher == "random":
        return BasicVariantGenerator(points_to_evaluate=points, max_concurrent=s.max_concurrent,
                                     random_state=s.seed), space
    if s.searcher == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        searcher = OptunaSearch(points_to_evaluate=points, seed=s.seed)
        return ConcurrencyLimiter(searcher, max_concurrent=s.max_concurrent), space
    import nevergrad as ng
    import numpy as np
    from ray.tune.search.nevergrad import NevergradSearch
    parametrization = NevergradSearch.convert_search_space(space)
    parametrization.random_state = np.random.RandomState(s.seed)      # seeded suggestions
    searcher = NevergradSearch(optimizer=ng.optimizers.registry[s.optimizer], space=parametrization,
                               metric=metric, mode=mode, points_to_evaluate=points)
    return ConcurrencyLimiter(searcher, max_concurrent=s.max_concurrent), {}


def run_tune(recipe: TuneRecipe, progress: bool = True, log=print) -> TuneResult:
    """Run the search; write best.yaml, decoding.json (decoding mode) and trials.json."""
    import ray
    from ray import tune

    from pipelines.train import init_ray

    model_dir = check_paths(recipe)            # a decoding search's model as a directory
    params = space_params(recipe)
    metric, mode = recipe.objective.metric, objective_mode(recipe)
    result = TuneResult(metric=metric, mode=mode)
    workdir = Path(recipe.workdir).expanduser().resolve()
    out_dir = Path(recipe.output.dir).expanduser().resolve() if recipe.output.dir else workdir / "tune" / recipe.name
    result.output_dir = out_dir
    training = base_training_recipe(recipe) if recipe.mode == "training" else None
    say = log if progress else None

    s = recipe.search
    if training is not None:
        per_trial = s.cpus_per_trial + training.scaling.num_workers * training.scaling.cpus_per_worker + 1
    else:
        per_trial = s.cpus_per_trial
    tracking = _Tracking(recipe, workdir)      # the DB and experiment exist before any trial runs
    init_ray(max(os.cpu_count() or 1, math.ceil(per_trial * s.max_concurrent)),
             use_gpu=training is not None and training.scaling.use_gpu)
    tracking.start(recipe, params)
    result.parent_run_id = tracking.run_id
    explicit_uri = os.environ.get("MLFLOW_TRACKING_URI")
    spec = {"name": recipe.name, "cwd": os.getcwd(), "metric": metric, "base": dict(recipe.base),
            "dev_file": str(Path(recipe.dev.file).resolve()) if recipe.dev.file else None,
            "max_rows": recipe.dev.max_rows, "threads": max(1, int(s.cpus_per_trial)),
            "parent_run_id": tracking.run_id, "experiment": recipe.tracking.experiment,
            "workdir": str(workdir), "tracking_uri": explicit_uri,
            "model": str(model_dir.resolve()) if model_dir else None,
            "recipe": str(Path(recipe.recipe).resolve()) if recipe.recipe else None,
            "overrides": list(recipe.overrides)}
    try:
        points = None
        if recipe.mode == "decoding":
            if s.include_default or not params:
                if say:
                    say("scoring the default settings (base) ...")
                remote = ray.remote(evaluate_decoding).options(num_cpus=s.cpus_per_trial)
                result.default = ray.get(remote.remote(spec, dict(recipe.base)))
                child = tracking.child("default", "default", dict(recipe.base), {"bert4ray.tune.default": "true"})
                if child:
                    tracking.log_metrics(child, {k: result.default[k] for k in ("bleu", "f1")})
                    tracking.end_child("default")
                if say:
                    say(f"default settings: {metric} {result.default[metric]:.4f}")
        elif s.include_default:
            from pipelines.recipe import get_value
            defaults = {p.key: get_value(training, p.key) for p in params}
            if all(p.contains(defaults[p.key]) for p in params):
                points = [defaults]
            else:
                outside = [p.key for p in params if not p.contains(defaults[p.key])]
                result.note = (f"the recipe's own value of {', '.join(outside)} lies outside the space: "
                               "no default trial")
        if not params:
            result.chosen = dict(recipe.base)
            result.note = "the space is empty: only the base settings were scored"
            tracking.finish({f"default_{k}": v for k, v in (result.default or {}).items()}, [])
            return result

        search_alg, param_space = _searcher(recipe, params, metric, mode, points)
        scheduler = board = None
        if recipe.scheduler.name == "asha":
            sc = recipe.scheduler
            board = ray.remote(num_cpus=0)(StopBoard).remote()
            spec["stop_board"] = board
            scheduler = _asha(board, time_attr="step", max_t=sc.max_t or training.schedule.max_steps or 10**9,
                              grace_period=sc.grace_period or training.schedule.eval_every,
                              reduction_factor=sc.reduction_factor)
        trial_fn = decoding_trial if recipe.mode == "decoding" else training_trial
        trainable = tune.with_resources(tune.with_parameters(trial_fn, spec=spec), {"cpu": s.cpus_per_trial})
        name = f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        events = _callback(tracking, result, recipe, say)
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=metric, mode=mode, search_alg=search_alg, scheduler=scheduler,
                num_samples=s.num_samples, time_budget_s=s.time_budget_s or None,
                reuse_actors=recipe.mode == "decoding",
                trial_name_creator=lambda t: t.trial_id, trial_dirname_creator=lambda t: t.trial_id),
            run_config=tune.RunConfig(
                name=name, storage_path=str(workdir / "ray-tune"), verbose=0, callbacks=[events],
                # A failing training trial (e.g. an objective the task does not report) most likely
                # fails them all, and each costs a training run: stop at the first.
                failure_config=tune.FailureConfig(fail_fast=recipe.mode == "training")))
        try:
            with _quiet_tune():
                grid = tuner.fit()
        finally:
            if board is not None:
                ray.kill(board)
        stopped = tracking.end_orphans()
        result.trials = _records(grid, recipe, metric, points)
        early = sum(t.status == "stopped" for t in result.trials)
        if (early or stopped) and say:
            say(f"{early} trial(s) stopped early by ASHA")
        _choose(result, recipe)
        files = _write_outputs(result, recipe, training, workdir, out_dir)
        summary = {"trials": len(result.trials), "trials_failed": sum(t.status == "error" for t in result.trials),
                   "trials_stopped": sum(t.status == "stopped" for t in result.trials)}
        if result.best is not None:
            summary[f"best_{metric}"] = result.best.score
        if result.default is not None:
            summary.update({f"default_{k}": v for k, v in result.default.items() if k in ("bleu", "f1")})
        elif any(t.default and t.score is not None for t in result.trials):
            summary[f"default_{metric}"] = next(t.score for t in result.trials if t.default and t.score is not None)
        tracking.finish(summary, files)
    except BaseException as exc:
        tracking.fail(exc)
        raise
    return result


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


def _records(grid, recipe: TuneRecipe, metric: str, points: list[dict] | None) -> list[TrialRecord]:
    records = []
    for r in grid:
        trial_id = Path(r.path).name if r.path else str((r.metrics or {}).get("trial_id", "?"))
        metrics = {k: v for k, v in (r.metrics or {}).items()
                   if k in (metric, "bleu", "f1", "step", "total", "finished", "mlflow_run_id", "model_dir")
                   or k.startswith("eval_")}
        config = {k: r.config[k] for k in recipe.space if k in (r.config or {})}
        if r.error is not None:
            message = str(r.error).strip().splitlines()
            status, error = "error", (message[-1] if message else type(r.error).__name__)
        elif recipe.mode == "training" and not metrics.get("finished"):
            status, error = "stopped", None
        else:
            status, error = "done", None
        value = metrics.get(metric)
        records.append(TrialRecord(trial_id=trial_id, config=config, metrics=metrics, status=status,
                                   score=float(value) if _number(value) else None, error=error,
                                   default=bool(points) and config == points[0]))
    return records


def _choose(result: TuneResult, recipe: TuneRecipe) -> None:
    finished = [t for t in result.trials if t.status == "done" and t.score is not None]
    if not finished:
        errors = [t.error for t in result.trials if t.error]
        # Every trial failing is most often the settings (e.g. more new tokens than the model has positions).
        raise ValueError("no trial finished" + (f"; first error: {errors[0]}" if errors else ""))
    best = finished[0]
    for t in finished[1:]:
        if result.better(t.score, best.score):
            best = t
    result.best = best
    if recipe.mode == "decoding":
        default = (result.default or {}).get(result.metric)
        if default is not None and result.better(default, best.score):
            result.chosen, result.kept_default = dict(recipe.base), True
            result.note = "no trial beat the default settings: best.yaml keeps them"
        else:
            result.chosen = {**recipe.base, **best.config}
    else:
        result.chosen = dict(best.config)


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path and Path(path).exists() else path


def _write_outputs(result: TuneResult, recipe: TuneRecipe, training, workdir: Path, out_dir: Path) -> list[Path]:
    from pipelines.recipe import to_dict
    out_dir.mkdir(parents=True, exist_ok=True)
    when = time.strftime("%Y-%m-%d %H:%M")
    best = result.best
    metric = result.metric
    files = []
    trials = [dataclasses.asdict(t) for t in result.trials]
    (out_dir / "trials.json").write_text(json.dumps({"metric": metric, "mode": result.mode, "default": result.default,
                                                     "trials": trials}, indent=1, ensure_ascii=False, default=str),
                                         encoding="utf-8")
    files.append(out_dir / "trials.json")
    if recipe.mode == "decoding":
        default = (result.default or {}).get(metric)
        chosen_score = default if result.kept_default else best.score
        text = dataclasses.asdict(recipe)
        text.update(name=f"{recipe.name}-best", workdir=str(workdir), model=_absolute(recipe.model),
                    base=result.chosen, space={}, result={
                        metric: chosen_score, "best_trial": best.trial_id,
                        **({f"default_{metric}": default} if default is not None else {}),
                        "mlflow_parent_run_id": result.parent_run_id, "written": when})
        text["dev"]["file"] = _absolute(recipe.dev.file)
        text["search"] = {**text["search"], "num_samples": 1}
        text["output"] = {"dir": None}
        header = [f"Best decoding settings from `bert4ray tune` ({recipe.name}, {when}):",
                  f"  {metric} {chosen_score:.4f}" + (f" vs {default:.4f} for the default settings (base alone)"
                                                    if default is not None else ""),
                  "This file is a tune recipe with an empty space: `bert4ray tune THIS_FILE` re-scores the",
                  "settings in `base` on the dev set. decoding.json beside it holds the settings alone",
                  "(DecodingConfig keys, e.g. SimBERT.generate(texts, n, decoding=...))."]
        (out_dir / "decoding.json").write_text(json.dumps(result.chosen, indent=1, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
        files.append(out_dir / "decoding.json")
    else:
        from pipelines.recipe import load_recipe
        chosen = load_recipe(recipe.recipe, [*recipe.overrides,
                                             *(f"{k}={override_text(v)}" for k, v in result.chosen.items())])
        chosen.workdir = str(workdir)
        chosen.data.train = [_absolute(p) for p in chosen.data.train]
        chosen.data.validation = [_absolute(p) for p in chosen.data.validation]
        chosen.model.init_from = _absolute(chosen.model.init_from)
        chosen.model.vocab = _absolute(chosen.model.vocab)
        text = to_dict(chosen)
        header = [f"Best training settings from `bert4ray tune` ({recipe.name}, {when}): "
                  f"{metric} {best.score:.4f} (trial {best.trial_id})",
                  f"  {', '.join(f'{k}={v}' for k, v in result.chosen.items())}",
                  f"Train it: bert4ray train THIS_FILE   ({recipe.recipe} with the tune recipe's overrides "
                  "and these values)"]
    body = yaml.safe_dump(text, sort_keys=False, allow_unicode=True)
    path = out_dir / "best.yaml"
    path.write_text("".join(f"# {line}\n" for line in header) + body, encoding="utf-8")
    result.best_file = path
    files.insert(0, path)
    return files
