"""`bert4ray probe RECIPE.yaml [--set a.b=c ...]`: Perturbed Masking over a corpus with Ray Data.

    bert4ray probe pipelines/recipes/probe-tiny.yaml --set model.path=runs/mlm/model
    bert4ray probe pipelines/recipes/probe-tiny.yaml --set probe.tasks=[dependency] \\
        --set data.source=files --set data.files=[dev.conllu]

Writes words / heads / trees as Parquet and, with gold data, prints the scores and logs them to MLflow.
"""

from __future__ import annotations

HELP = "Perturbed Masking: unsupervised segmentation and dependency / constituency parsing of a corpus"


def add_arguments(parser) -> None:
    parser.add_argument("recipe", help="probe recipe YAML (see pipelines/recipes/probe-tiny.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set probe.layer=1 (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args) -> int:
    from pipelines.cli import UserError
    from pipelines.probe import load_probe_recipe, run_probe
    from pipelines.recipe import RecipeError

    try:
        recipe = load_probe_recipe(args.recipe, args.overrides)
    except RecipeError as exc:
        raise UserError(str(exc)) from None
    result = run_probe(recipe, progress=not args.quiet)
    if result.mlflow_run_id:
        print(f"mlflow run: {result.mlflow_run_id}")
    print(result.output_dir)
    return 0
