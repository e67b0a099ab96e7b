"""What a `bert4ray tune` search found: one record per trial, the best of them, and the files it
writes (best.yaml, decoding.json in decoding mode, trials.json)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipelines.tune_recipe import TuneRecipe, override_text


def finite_number(v) -> bool:
    """A score that can be compared and logged: an int or float, not a bool, NaN or infinite."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))


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
    published: str | None = None
    """The bucket location the outputs were uploaded to (output.dir as a URI)."""
    parent_run_id: str | None = None
    kept_default: bool = False
    """Decoding: no trial beat the default settings, so best.yaml holds `base` unchanged."""
    note: str = ""

    def better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b


def trial_records(grid, recipe: TuneRecipe, metric: str, points: list[dict] | None) -> list[TrialRecord]:
    """The trials of Tune's ResultGrid; `points[0]`, when given, is the default trial's config."""
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
                                   score=float(value) if finite_number(value) else None, error=error,
                                   default=bool(points) and config == points[0]))
    return records


def choose_best(result: TuneResult, recipe: TuneRecipe) -> None:
    """Set result.best and result.chosen (decoding: the default settings unless a trial beat them)."""
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


def search_summary(result: TuneResult) -> dict:
    """The parent run's metrics: trial counts, the best score and the default settings' scores."""
    metric = result.metric
    summary = {"trials": len(result.trials), "trials_failed": sum(t.status == "error" for t in result.trials),
               "trials_stopped": sum(t.status == "stopped" for t in result.trials)}
    if result.best is not None:
        summary[f"best_{metric}"] = result.best.score
    if result.default is not None:
        summary.update({f"default_{k}": v for k, v in result.default.items() if k in ("bleu", "f1")})
    elif any(t.default and t.score is not None for t in result.trials):
        summary[f"default_{metric}"] = next(t.score for t in result.trials if t.default and t.score is not None)
    return summary


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path and Path(path).exists() else path


def write_outputs(result: TuneResult, recipe: TuneRecipe, workdir: Path, out_dir: Path) -> list[Path]:
    """trials.json, best.yaml and (decoding mode) decoding.json; returns them, best.yaml first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    when = time.strftime("%Y-%m-%d %H:%M")
    files = [_write_trials(result, out_dir)]
    if recipe.mode == "decoding":
        header, text = _best_decoding(result, recipe, workdir, when)
        (out_dir / "decoding.json").write_text(json.dumps(result.chosen, indent=1, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
        files.append(out_dir / "decoding.json")
    else:
        header, text = _best_training(result, recipe, workdir, when)
    body = yaml.safe_dump(text, sort_keys=False, allow_unicode=True)
    path = out_dir / "best.yaml"
    path.write_text("".join(f"# {line}\n" for line in header) + body, encoding="utf-8")
    result.best_file = path
    files.insert(0, path)
    return files


def _write_trials(result: TuneResult, out_dir: Path) -> Path:
    trials = [dataclasses.asdict(t) for t in result.trials]
    path = out_dir / "trials.json"
    path.write_text(json.dumps({"metric": result.metric, "mode": result.mode, "default": result.default,
                                "trials": trials}, indent=1, ensure_ascii=False, default=str),
                    encoding="utf-8")
    return path


def _best_decoding(result: TuneResult, recipe: TuneRecipe, workdir: Path, when: str) -> tuple[list[str], dict]:
    """(header, content) of best.yaml in decoding mode: the tune recipe with the chosen settings as
    its `base` and an empty space."""
    metric, best = result.metric, result.best
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
    return header, text


def _best_training(result: TuneResult, recipe: TuneRecipe, workdir: Path, when: str) -> tuple[list[str], dict]:
    """(header, content) of best.yaml in training mode: the full training recipe with the tune
    recipe's overrides and the best values, its paths absolute."""
    from pipelines.recipe import load_recipe, to_dict
    metric, best = result.metric, result.best
    chosen = load_recipe(recipe.recipe, [*recipe.overrides,
                                         *(f"{k}={override_text(v)}" for k, v in result.chosen.items())])
    chosen.workdir = str(workdir)
    chosen.data.train = [_absolute(p) for p in chosen.data.train]
    chosen.data.validation = [_absolute(p) for p in chosen.data.validation]
    chosen.model.init_from = _absolute(chosen.model.init_from)
    chosen.model.vocab = _absolute(chosen.model.vocab)
    header = [f"Best training settings from `bert4ray tune` ({recipe.name}, {when}): "
              f"{metric} {best.score:.4f} (trial {best.trial_id})",
              f"  {', '.join(f'{k}={v}' for k, v in result.chosen.items())}",
              f"Train it: bert4ray train THIS_FILE   ({recipe.recipe} with the tune recipe's overrides "
              "and these values)"]
    return header, to_dict(chosen)
