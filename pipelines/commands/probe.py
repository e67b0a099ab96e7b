"""`bert4ray probe RECIPE.yaml [--set a.b=c ...]`: Perturbed Masking over a corpus with Ray Data.

    bert4ray probe pipelines/recipes/probe-tiny.yaml --set model.path=runs/mlm/model
    bert4ray probe pipelines/recipes/probe-tiny.yaml --set probe.tasks=[dependency] \\
        --set data.source=files --set data.files=[dev.conllu]

Writes words / heads / trees as Parquet and, with gold data, prints the scores and logs them to MLflow.
"""

from __future__ import annotations

HELP = "Perturbed Masking: unsupervised segmentation and dependency / constituency parsing of a corpus"


def add_arguments(parser) -> None:
    from pipelines.job import add_recipe_arguments
    add_recipe_arguments(parser, "probe recipe YAML (see pipelines/recipes/probe-tiny.yaml)", example="probe.layer=1")


def run(args) -> int:
    from pipelines.job import load_command_recipe, print_config
    from pipelines.probe import load_probe_recipe, run_probe

    recipe = load_command_recipe(args, load_probe_recipe)
    if print_config(args, recipe):
        return 0
    result = run_probe(recipe, progress=not args.quiet)
    if result.mlflow_run_id:
        print(f"mlflow run: {result.mlflow_run_id}")
    print(result.published or result.output_dir)
    return 0
