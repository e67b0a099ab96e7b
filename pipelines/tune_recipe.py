"""The `bert4ray tune` recipe: typed sections, the search space and its checks.

    from pipelines.tune_recipe import load_tune_recipe
    recipe = load_tune_recipe("pipelines/recipes/tune-simbert-decoding.yaml", ["search.num_samples=8"])

Keys, types, choices and bounds are checked like every job's recipe (pipelines.sections): an unknown
key is named with the closest valid one. The format is documented in
pipelines/recipes/tune-simbert-decoding.yaml.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.sections import (
    RecipeError,
    TrackingSection,
    bounded,
    check_choice,
    check_local_workdir,
    choice,
    load_sections,
    recipe_dataclass,
    suggest,
    tracking_field,
)

MODES = ("decoding", "training")
SEARCHERS = ("random", "optuna", "nevergrad")
SCHEDULERS = ("fifo", "asha")
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "lograndint", "choice")
DECODING_METRICS = ("bleu", "f1")


# --- recipe ------------------------------------------------------------------------------------------
@dataclass
class TuneDevSection:
    file: str | None = None
    """Dev rows (JSON Lines / Parquet): {"texts": [...]}, {"turns": [...]} or {"source", "target"}."""
    max_rows: int = bounded(0, at_least=0)
    """Score at most this many dev examples (0 = all)."""


@dataclass
class TuneObjectiveSection:
    metric: str = "bleu"
    """`bleu` or `f1` (token-level) on the dev set; training mode also any metric the task's
    evaluation reports, prefixed `eval_` (e.g. `eval_macro_f1`, label-level F1 of a classifier)."""
    mode: str = choice("auto", "max", "min")
    """`max`, `min`, or `auto` (min for names with loss / perplexity, else max)."""


@dataclass
class TuneSearchSection:
    searcher: str = choice(*SEARCHERS, default="optuna")
    """`random`, `optuna` (TPE) or `nevergrad`."""
    optimizer: str = "OnePlusOne"
    """Nevergrad optimizer name (OnePlusOne, CMA, TwoPointsDE, NGOpt, ...)."""
    num_samples: int = bounded(16, at_least=1)
    """Trials."""
    max_concurrent: int = bounded(1, at_least=1)
    """Trials running at once (ConcurrencyLimiter)."""
    seed: int = 0
    cpus_per_trial: float = bounded(1.0, above=0)
    """Logical CPUs a trial reserves (training mode: the driver function only; its Train workers
    reserve `scaling.num_workers` x `scaling.cpus_per_worker` more, plus one for Ray Data)."""
    include_default: bool = True
    """Also score the default settings: decoding mode `base` alone, training mode the recipe's own
    values (trial 0, if inside the space)."""
    time_budget_s: float = bounded(0.0, at_least=0)
    """Stop starting trials after this many seconds (0 = no limit)."""


@dataclass
class TuneSchedulerSection:
    name: str = choice(*SCHEDULERS)
    """`fifo` (every trial runs to the end) or `asha` (training mode: stops poor trials at
    intermediate evaluations of the objective, an `eval_` metric)."""
    grace_period: int = bounded(0, at_least=0)
    """ASHA: optimizer steps before a trial may be stopped (0 = the recipe's schedule.eval_every)."""
    reduction_factor: float = bounded(2.0, above=1)
    max_t: int = bounded(0, at_least=0)
    """ASHA: steps of a full trial (0 = the recipe's schedule.max_steps)."""


@dataclass
class TuneOutputSection:
    dir: str | None = None
    """Where best.yaml, decoding.json and trials.json go (default <workdir>/tune/<name>)."""


@recipe_dataclass
class TuneRecipe:
    name: str = "tune"
    workdir: str = "bert4ray-runs"
    """MLflow database, Tune's trial logs, training runs and the output go under this directory."""
    mode: str = choice(*MODES)
    """`decoding` (settings of a trained model) or `training` (values of a training recipe)."""
    model: str | None = None
    """Decoding mode: the model directory (simbert or dialog)."""
    recipe: str | None = None
    """Training mode: the training recipe file."""
    overrides: list[str] = field(default_factory=list)
    """Training mode: `key=value` overrides applied to the training recipe in every trial."""
    dev: TuneDevSection
    objective: TuneObjectiveSection
    base: dict[str, Any] = field(default_factory=dict)
    """Decoding settings that every trial uses (DecodingConfig keys); a key also in `space` is
    searched, and its `base` value is its default. Training mode: how dev BLEU / F1 decodes."""
    space: dict[str, Any] = field(default_factory=dict)
    """key -> one distribution: {uniform: [lo, hi]}, {loguniform: [lo, hi]}, {randint: [lo, hi]}
    (integers lo..hi, both included), {lograndint: [lo, hi]}, {choice: [a, b, ...]}. Keys are
    DecodingConfig fields (decoding) or dotted training-recipe keys such as optim.lr (training)."""
    search: TuneSearchSection
    scheduler: TuneSchedulerSection
    tracking: TrackingSection = tracking_field("bert4ray-tune")
    output: TuneOutputSection
    result: dict[str, Any] = field(default_factory=dict)
    """Written by `bert4ray tune` into best.yaml (scores, trial, MLflow run); not read."""

    def check(self) -> None:
        check_local_workdir(self.workdir, "output.dir")
        check_tune_recipe(self)


@dataclass
class Param:
    """One searched key and its distribution (bounds inclusive)."""
    key: str
    kind: str
    values: list

    def domain(self):
        from ray import tune
        lo, hi = (self.values + [None, None])[:2]
        if self.kind == "uniform":
            return tune.uniform(lo, hi)
        if self.kind == "loguniform":
            return tune.loguniform(lo, hi)
        if self.kind == "randint":
            return tune.randint(lo, hi + 1)          # Tune's upper bound is exclusive
        if self.kind == "lograndint":
            return tune.lograndint(lo, hi + 1)
        return tune.choice(list(self.values))

    def corners(self) -> list:
        return list(self.values)

    def contains(self, value) -> bool:
        if self.kind == "choice":
            return any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in self.values)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind in ("randint", "lograndint") and not float(value).is_integer():
            return False
        return self.values[0] <= value <= self.values[1]


def parse_param(key: str, spec: Any) -> Param:
    where = f"space.{key}"
    example = "{uniform: [0.5, 1.0]}, {loguniform: [1.0e-4, 1.0e-2]}, {randint: [1, 40]} or {choice: [true, false]}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise RecipeError(f"recipe key '{where}' must be one distribution such as {example}; got {spec!r}")
    (kind, args), = spec.items()
    if kind not in DISTRIBUTIONS:
        raise RecipeError(f"recipe key '{where}': unknown distribution '{kind}'{suggest(kind, DISTRIBUTIONS)}; "
                          f"valid: {', '.join(DISTRIBUTIONS)}")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise RecipeError(f"recipe key '{where}': choice needs a non-empty list of values, got {args!r}")
        for v in args:
            if v is not None and not isinstance(v, str | int | float | bool):
                raise RecipeError(f"recipe key '{where}': choice values must be numbers, strings, "
                                  f"booleans or null, got {v!r}")
        return Param(key, kind, list(args))
    integer = kind in ("randint", "lograndint")
    if not (isinstance(args, list) and len(args) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in args)):
        raise RecipeError(f"recipe key '{where}': {kind} needs [low, high] (two numbers), got {args!r}")
    lo, hi = args
    if integer and not all(float(v).is_integer() for v in args):
        raise RecipeError(f"recipe key '{where}': {kind} bounds must be integers, got {args!r}")
    if not lo < hi:
        raise RecipeError(f"recipe key '{where}': {kind} needs low < high, got {args!r}")
    if kind.startswith("log") and lo <= 0:
        raise RecipeError(f"recipe key '{where}': {kind} needs low > 0, got {args!r}")
    return Param(key, kind, [int(lo), int(hi)] if integer else [float(lo), float(hi)])


def load_tune_recipe(path: str | Path | None = None, overrides: list[str] | None = None,
                     data: dict | None = None) -> TuneRecipe:
    """Read a tune recipe (a YAML file, `env:NAME` or a dict), apply `key=value` overrides and check
    its keys, values, space and training recipe (`check_paths`, at the start of a run, checks the
    model directory and the dev file)."""
    return load_sections(TuneRecipe, path, overrides, data)


def objective_mode(recipe: TuneRecipe) -> str:
    if recipe.objective.mode != "auto":
        return recipe.objective.mode
    name = recipe.objective.metric.lower()
    return "min" if any(w in name for w in ("loss", "perplexity", "ppl")) else "max"


def space_params(recipe: TuneRecipe) -> list[Param]:
    return [parse_param(str(k), v) for k, v in recipe.space.items()]


def check_tune_recipe(r: TuneRecipe) -> None:
    """The checks across sections (each field's choice or bound is checked as it is read); the
    first problem raises a RecipeError that names its key."""
    params = space_params(r)
    _check_base(r)
    if r.mode == "decoding":
        _check_decoding_search(r, params)
    else:
        _check_training_search(r, params)
    _check_dev(r)
    _check_search(r)


def _check_base(r: TuneRecipe) -> None:
    from components.decoding import DecodingConfig
    try:
        DecodingConfig.from_dict(r.base)
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"recipe section 'base': {exc}") from None


def _check_decoding_search(r: TuneRecipe, params: list[Param]) -> None:
    """Mode `decoding`: a model, a BLEU / F1 objective, and a space of decoding settings."""
    if r.recipe or r.overrides:
        raise RecipeError("recipe keys 'recipe' and 'overrides' belong to mode 'training'; "
                          "mode 'decoding' searches the settings of 'model'")
    if not r.model:
        raise RecipeError("recipe key 'model' must name a trained model directory (mode 'decoding')")
    check_choice(r.objective.metric, DECODING_METRICS, "objective.metric")
    for p in params:
        _check_decoding_param(r, p)
    if r.scheduler.name == "asha":
        raise RecipeError("recipe key 'scheduler.name': ASHA stops training trials at intermediate "
                          "evaluations; a decoding trial reports once (use fifo)")


def _check_decoding_param(r: TuneRecipe, p: Param) -> None:
    from components.decoding import DecodingConfig
    fields = [f.name for f in dataclasses.fields(DecodingConfig)]
    if p.key not in fields:
        hint = suggest(p.key, fields, "; did you mean 'space.{}'?") or f"; valid: {', '.join(fields)}"
        raise RecipeError(f"recipe key 'space.{p.key}' is not a decoding setting{hint}")
    if p.key == "num_return_sequences":
        raise RecipeError("recipe key 'space.num_return_sequences': a decoding search scores one "
                          "output per dev example")
    for v in p.corners():
        try:
            DecodingConfig.from_dict({**r.base, p.key: v})
        except (ValueError, TypeError) as exc:
            raise RecipeError(f"recipe key 'space.{p.key}': value {v!r} is not a valid setting "
                              f"({exc})") from None


def _check_training_search(r: TuneRecipe, params: list[Param]) -> None:
    """Mode `training`: a training recipe that takes every corner of the space, an objective its
    task reports, and (for ASHA) intermediate evaluations of it."""
    if r.model:
        raise RecipeError("recipe key 'model' belongs to mode 'decoding'; mode 'training' trains "
                          "'recipe' (set model.init_from in its overrides to start from a model)")
    if not r.recipe:
        raise RecipeError("recipe key 'recipe' must name a training recipe file (mode 'training')")
    training = base_training_recipe(r)
    if not params:
        raise RecipeError("recipe section 'space' is empty: nothing to tune "
                          f"(`bert4ray train {r.recipe}` runs the recipe as it is)")
    for p in params:
        for v in p.corners():
            try:
                base_training_recipe(r, [f"{p.key}={override_text(v)}"])
            except RecipeError as exc:
                raise RecipeError(f"recipe key 'space.{p.key}' (a key of the training recipe, value "
                                  f"{v!r}): {exc}") from None
    _check_training_objective(r.objective.metric, training)
    if r.scheduler.name == "asha":
        _check_asha(r.objective.metric, training)


def _check_training_objective(metric: str, training) -> None:
    if not (metric in DECODING_METRICS or (metric.startswith("eval_") and len(metric) > 5)):
        hint = suggest(metric, [*DECODING_METRICS, "eval_loss", "eval_macro_f1", "eval_accuracy", "eval_top1"])
        raise RecipeError(f"recipe key 'objective.metric' has value {metric!r}{hint}; valid: bleu, f1, "
                          "or eval_<name> from the task's evaluation (e.g. eval_macro_f1)")
    from pipelines.tasks import task_is
    if metric in DECODING_METRICS and not task_is(training.task.name, "generates"):
        raise RecipeError(f"recipe key 'objective.metric': {metric} scores generated text, but task "
                          f"'{training.task.name}' does not generate; use one of its eval_ metrics")


def _check_asha(metric: str, training) -> None:
    if not metric.startswith("eval_"):
        raise RecipeError(f"recipe key 'scheduler.name': ASHA compares trials at intermediate "
                          f"evaluations, and '{metric}' is only known after training; use an "
                          "eval_ objective or scheduler fifo")
    if training.schedule.eval_every <= 0:
        raise RecipeError("recipe key 'scheduler.name': ASHA needs intermediate evaluations; add "
                          "schedule.eval_every=N to 'overrides'")


def _check_dev(r: TuneRecipe) -> None:
    metric = r.objective.metric
    if (r.mode == "decoding" or metric in DECODING_METRICS) and not r.dev.file:
        raise RecipeError(f"recipe key 'dev.file' must name the dev set that {metric} is computed on")


def _check_search(r: TuneRecipe) -> None:
    if r.search.searcher == "nevergrad":
        names = nevergrad_optimizers()
        if r.search.optimizer not in names:
            raise RecipeError(f"recipe key 'search.optimizer': nevergrad has no optimizer '{r.search.optimizer}'"
                              f"{suggest(r.search.optimizer, names)}; e.g. OnePlusOne, CMA, TwoPointsDE, NGOpt")
    if r.search.time_budget_s and r.mode == "training":
        raise RecipeError("recipe key 'search.time_budget_s' is for decoding searches: at the deadline Tune "
                          "kills running trials, and a killed Train run keeps its CPUs reserved")


def check_paths(r: TuneRecipe) -> Path | None:
    """The files a run reads exist (checked when the run starts, before Ray; loading a recipe does
    not need them, so a shipped recipe validates before its model is trained). Returns the model
    of a decoding search as a directory (an MLflow URI from the workdir's store, downloaded)."""
    model_dir = None
    if r.mode == "decoding":
        from pipelines.model_store import resolve_model
        from pipelines.tracking import tracking_uri
        try:
            model_dir = resolve_model(r.model, tracking_uri=tracking_uri(Path(r.workdir).expanduser()))
        except FileNotFoundError:
            raise RecipeError(f"recipe key 'model': '{r.model}' is not a model directory") from None
        except ValueError as exc:
            raise RecipeError(f"recipe key 'model': {exc}") from None
        from components.config import read_bert4ray_json
        from pipelines.tasks import task_is, tasks_where
        task = read_bert4ray_json(model_dir).get("task", "simbert")
        if not task_is(task, "generates"):
            raise RecipeError(f"recipe key 'model': '{r.model}' was trained for '{task}', which does not "
                              f"generate; decoding searches need a {' or '.join(tasks_where('generates'))} model")
    from pipelines.data import location_exists
    needs_dev = r.mode == "decoding" or r.objective.metric in DECODING_METRICS
    if needs_dev and not location_exists(r.dev.file):
        raise RecipeError(f"recipe key 'dev.file': '{r.dev.file}' does not exist")
    return model_dir


def nevergrad_optimizers() -> list[str]:
    import nevergrad as ng
    return sorted(ng.optimizers.registry)


def override_text(value) -> str:
    """A sampled value as the text of a `--set key=value` override (YAML)."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def base_training_recipe(r: TuneRecipe, extra: list[str] | None = None):
    """The training recipe with the tune recipe's overrides (and `extra`) applied."""
    from pipelines.recipe import load_recipe
    try:
        return load_recipe(r.recipe, [*r.overrides, *(extra or [])])
    except RecipeError as exc:
        raise RecipeError(f"training recipe '{r.recipe}': {exc}") from None
