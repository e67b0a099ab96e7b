"""The trials of `bert4ray tune`: functions that Ray Tune runs in its workers, one call per trial.

- `decoding_trial`: decode the dev set with the base settings plus the sampled ones and score it.
- `training_trial`: a Ray Train driver that trains the recipe with the sampled values, reporting
  every intermediate evaluation to Tune (ASHA decides on these) and then the final objective.

`spec` is the part of the tune recipe a trial needs, as plain values (pipelines.tune builds it).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from pipelines.tune_recipe import DECODING_METRICS, override_text
from pipelines.tune_results import finite_number
from pipelines.tune_schedulers import stop_requested

_CACHE: dict = {}


def _enter(spec: dict) -> None:
    """Trials run in Tune's trial directory: go back to where the recipe's relative paths point."""
    if spec.get("cwd") and Path(spec["cwd"]).is_dir():
        os.chdir(spec["cwd"])
    if spec.get("tracking_uri"):
        os.environ["MLFLOW_TRACKING_URI"] = spec["tracking_uri"]


# --- decoding mode -----------------------------------------------------------------------------------
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


# --- training mode -----------------------------------------------------------------------------------
def trial_overrides(spec: dict, config: dict) -> list[str]:
    return [*spec["overrides"], *(f"{k}={override_text(v)}" for k, v in config.items())]


def training_trial(config: dict, spec: dict) -> None:
    """A Tune trial that is a Ray Train driver: it trains the recipe with the sampled values,
    reports every intermediate evaluation of the objective (ASHA decides on these), then the
    final objective (dev BLEU / F1 of the exported model, or the final evaluation)."""
    from ray import tune

    from pipelines.train import run_training

    _enter(spec)
    trial_id = tune.get_context().get_trial_id()
    recipe = _trial_recipe(spec, config, trial_id)
    board = spec.get("stop_board")
    should_stop = functools.partial(stop_requested, board, trial_id) if board is not None else None
    result = run_training(recipe, progress=False, should_stop=should_stop,
                          on_record=functools.partial(_report_evaluation, spec["metric"], should_stop))
    if result.model_dir is None:        # ASHA gave up on this trial: its Train run ended early
        _tag_stopped(result, trial_id)
        return
    final = _final_objective(spec, result)
    if result.mlflow_run_id:
        from mlflow.tracking import MlflowClient
        MlflowClient().set_tag(result.mlflow_run_id, "bert4ray.tune.trial_id", trial_id)
    total = int(result.metrics.get("step", 0)) or max([int(h.get("total", 0)) for h in result.history] or [0])
    tune.report({**final, "step": total, "total": total, "finished": 1, "model_dir": str(result.model_dir),
                 "mlflow_run_id": result.mlflow_run_id or ""})


def _trial_recipe(spec: dict, config: dict, trial_id: str):
    """The training recipe of this trial: its own run name, the search's workdir, and an MLflow
    child run of the search's parent run (no tracking when the search has none)."""
    from pipelines.recipe import load_recipe
    extra = [f"name={spec['name']}-{trial_id}", f"workdir={spec['workdir']}", "tracking.registered_model=null"]
    if spec["parent_run_id"]:
        extra += [f"tracking.parent_run_id={spec['parent_run_id']}", f"tracking.experiment={spec['experiment']}",
                  f"tracking.run_name=trial-{trial_id}"]
    else:
        extra.append("tracking.enabled=false")
    return load_recipe(spec["recipe"], trial_overrides(spec, config) + extra)


def _report_evaluation(metric: str, should_stop, record: dict) -> None:
    """A progress record of the Train run that holds an intermediate evaluation of the objective,
    reported to Tune. The final evaluation is reported after the export (ASHA stops a trial at max_t)."""
    from ray import tune
    if metric in record and record["step"] < record["total"] and not (should_stop and should_stop()):
        tune.report({metric: float(record[metric]), "step": int(record["step"]), "total": int(record["total"]),
                     **{k: float(v) for k, v in record.items() if k.startswith("eval_")}})


def _tag_stopped(result, trial_id: str) -> None:
    if result.mlflow_run_id:
        from mlflow.tracking import MlflowClient
        client = MlflowClient()
        client.set_tag(result.mlflow_run_id, "bert4ray.tune.trial_id", trial_id)
        client.set_tag(result.mlflow_run_id, "bert4ray.tune.stopped",
                       f"stopped early by ASHA at step {int(result.metrics.get('step', 0))}")


def _final_objective(spec: dict, result) -> dict:
    """The final evaluation of a finished run; for a BLEU / F1 objective, that score of the exported
    model on the dev set (logged to the run as dev_<metric>)."""
    metric = spec["metric"]
    final = {k: float(v) for k, v in result.metrics.items() if k.startswith("eval_") and finite_number(v)}
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
    return final
