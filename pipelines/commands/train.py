"""`bert4ray train RECIPE.yaml [--set a.b=c ...] [--overlay FILE ...] [--output DIR] [--resume]`."""

from __future__ import annotations

HELP = "train a model from a recipe on Ray Train + DeepSpeed (mlm, classify, ...)"


def add_arguments(parser) -> None:
    from pipelines.job import add_recipe_arguments
    add_recipe_arguments(parser, "recipe YAML file (see pipelines/recipes/), or env:NAME for YAML text in the "
                         "environment variable NAME (how `bert4ray submit` passes it to a job)",
                         example="optim.lr=1e-3", progress="no live progress line")
    parser.add_argument("--output", help="directory for the final model (default: under the workdir)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the last run of this recipe from its latest checkpoint")


def run(args) -> int:
    from pipelines.job import load_command_recipe, print_config
    from pipelines.recipe import load_recipe

    recipe = load_command_recipe(args, load_recipe)
    if print_config(args, recipe):
        return 0
    from pipelines.train import run_training
    result = run_training(recipe, output=args.output, resume=args.resume, progress=not args.quiet)
    for key in sorted(result.metrics):
        if key.startswith("eval_") or key == "loss":
            print(f"{key}: {result.metrics[key]:.4f}")
    if result.data_report is not None:
        print(f"data: {result.data_report.summary()}")
    if result.mlflow_run_id:
        print(f"mlflow run: {result.mlflow_run_id}")
    print((result.model_location or result.model_dir) if result.model_dir else f"stopped at step {int(result.metrics.get('step', 0))}; continue with --resume")
    return 0
