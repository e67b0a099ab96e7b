"""`bert4ray tune RECIPE.yaml [--set a.b=c ...]`: Ray Tune search over decoding or training settings.

    bert4ray tune pipelines/recipes/tune-simbert-decoding.yaml
    bert4ray tune pipelines/recipes/tune-simbert-decoding.yaml --set search.searcher=nevergrad \\
        --set search.optimizer=CMA --set search.num_samples=32
    bert4ray tune bert4ray-runs/tune/tune-simbert-decoding/best.yaml     # re-score the best settings

Prints a table of the trials and the best settings against the default ones, writes best.yaml (a
ready-to-run recipe) and logs a parent MLflow run with one child run per trial.
"""

from __future__ import annotations

HELP = "Ray Tune search (random / Optuna TPE / Nevergrad, ASHA) over decoding or training settings for BLEU / F1"
MAX_ROWS_SHOWN = 30


def add_arguments(parser) -> None:
    from pipelines.job import add_recipe_arguments
    add_recipe_arguments(parser, "tune recipe YAML (see pipelines/recipes/tune-simbert-decoding.yaml)",
                         example="search.num_samples=32")


def run(args) -> int:
    from rich.console import Console

    from pipelines.job import load_command_recipe, print_config
    from pipelines.tune_recipe import load_tune_recipe

    recipe = load_command_recipe(args, load_tune_recipe)
    if print_config(args, recipe):
        return 0
    from pipelines.tune import run_tune
    console = Console(highlight=False, soft_wrap=True)     # long lines stay whole (copy-paste)
    result = run_tune(recipe, progress=not args.quiet, log=lambda line: console.print(line, markup=False))
    print_report(result, recipe, console)
    return 0


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_report(result, recipe, console) -> None:
    from rich.table import Table

    metric = result.metric
    if result.trials:
        ranked = sorted(result.trials, key=lambda t: (t.score is None, -(t.score or 0.0) if result.mode == "max"
                                                      else (t.score or 0.0)))
        table = Table(title=f"{len(result.trials)} trials, by {metric} ({result.mode})")
        table.add_column("trial", no_wrap=True)
        keys = list(recipe.space)
        for key in keys:
            table.add_column(key, justify="right")
        extra = ["bleu", "f1"] if recipe.mode == "decoding" else ["step"]
        columns = [metric] + [k for k in extra if k != metric]
        for c in columns:
            table.add_column(c, justify="right")
        table.add_column("status", no_wrap=True)
        for t in ranked[:MAX_ROWS_SHOWN]:
            name = t.trial_id + (" (default)" if t.default else "") + (" *" if t is result.best else "")
            status = t.status if not t.error else f"error: {t.error[:60]}"
            table.add_row(name, *(_fmt(t.config.get(k, "")) for k in keys),
                          *(_fmt(t.metrics.get(c, "")) for c in columns), status)
        # Piped output is 80 columns by default: too narrow for a few searched keys.
        console.print(table, width=None if console.is_terminal else 200)
        if len(ranked) > MAX_ROWS_SHOWN:
            console.print(f"... and {len(ranked) - MAX_ROWS_SHOWN} more (trials.json)")
    if result.default is not None:
        console.print(f"default settings (base): {metric} {result.default[metric]:.4f}", markup=False)
    if result.best is not None:
        console.print(f"best trial {result.best.trial_id}: {metric} {result.best.score:.4f}", markup=False)
    if recipe.mode == "decoding":
        console.print("best decoding settings: " + ", ".join(f"{k}={_fmt(v)}" for k, v in result.chosen.items()),
                      markup=False)
    elif result.chosen:
        console.print("best values: " + ", ".join(f"{k}={_fmt(v)}" for k, v in result.chosen.items()), markup=False)
    if result.note:
        console.print(result.note, markup=False)
    if result.parent_run_id:
        console.print(f"mlflow parent run: {result.parent_run_id}", markup=False)
    if result.published:
        console.print(f"outputs uploaded to {result.published}", markup=False)
    if result.best_file:
        console.print(str(result.best_file), markup=False)
