"""MLflow for `bert4ray tune`: one parent run for the search (tracked_run), one child run per trial
(tag `mlflow.parentRunId`), and the Tune callback that keeps the decoding trials' child runs and prints
a line per finished trial."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.tune_recipe import TuneRecipe, objective_mode
from pipelines.tune_results import finite_number

if TYPE_CHECKING:
    from pipelines.tune_results import TuneResult


class SearchTracking:
    """The children of the search's parent run (`parent`, a JobRun that run_tune opens with
    tracked_run): in decoding mode one child run per trial, written from the driver with an
    MlflowClient (training trials open their own child runs via run_training)."""

    def __init__(self, recipe: TuneRecipe, workdir: Path):
        from pipelines.tracking import JobRun
        self.enabled = recipe.tracking.enabled
        self.parent = JobRun()
        self.children: dict[str, str] = {}
        if not self.enabled:
            return
        from mlflow.tracking import MlflowClient

        from pipelines.tracking import tracking_uri, use_experiment
        self.experiment_id = use_experiment(workdir, recipe.tracking.experiment)
        self.client = MlflowClient(tracking_uri(workdir))

    @property
    def run_id(self) -> str | None:
        return self.parent.run_id

    def log_params(self, run_id: str, values: dict) -> None:
        from mlflow.entities import Param as MlflowParam

        from pipelines.tracking import param_value
        self.client.log_batch(run_id, params=[MlflowParam(k, param_value(v)) for k, v in values.items()])

    def log_metrics(self, run_id: str, values: dict, step: int = 0) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if finite_number(v)]
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


def resolved(recipe: TuneRecipe) -> TuneRecipe:
    """The recipe as the search runs it (objective.mode auto resolved): what the parent run logs."""
    return dataclasses.replace(recipe, objective=dataclasses.replace(recipe.objective, mode=objective_mode(recipe)))


def trial_events(tracking: SearchTracking, result: TuneResult, recipe: TuneRecipe, progress):
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
        if finite_number(value) and (self.best is None or (value > self.best if self.mode == "max"
                                                           else value < self.best)):
            self.best = value
        if self.progress:
            shown = f"{self.metric} {value:.4f}" if finite_number(value) else "no score"
            best = f"(best {self.best:.4f})" if self.best is not None else ""
            self.progress(f"trial {self.done}/{self.total} {trial.trial_id}: {shown} {best}")

    def on_trial_error(self, iteration, trials, trial, **info):
        if self.tracking:
            self.tracking.end_child(trial.trial_id, "FAILED", str(getattr(trial, "error_msg", None) or "error"))
        self.done += 1
        if self.progress:
            self.progress(f"trial {self.done}/{self.total} {trial.trial_id}: failed")
