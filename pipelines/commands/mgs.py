"""`bert4ray mgs RECIPE.yaml [--set a.b=c ...]`: MGS fine-tuning towards BLEU / F1.

    bert4ray mgs pipelines/recipes/mgs-simbert.yaml
    bert4ray mgs pipelines/recipes/mgs-simbert.yaml --set mgs.mixture=0      # noise-only ablation

Prints one line per step (cost, candidates, weight entropy, dev score) and the output directory:
model/ (the best model on dev), history.json, recipe.yaml.
"""

from __future__ import annotations

HELP = "MGS: derivative-free fine-tuning of a generating model towards BLEU / F1, candidates on Ray actors"


def add_arguments(parser) -> None:
    from pipelines.job import add_recipe_arguments
    add_recipe_arguments(parser, "MGS recipe YAML (see pipelines/recipes/mgs-simbert.yaml)", example="mgs.beta=10")
    parser.add_argument("--output", help="output directory or bucket URI (default <workdir>/mgs/<run id>)")


def run(args) -> int:
    from pipelines.job import load_command_recipe, print_config
    from pipelines.mgs import load_mgs_recipe, run_mgs

    recipe = load_command_recipe(args, load_mgs_recipe)
    if print_config(args, recipe):
        return 0
    result = run_mgs(recipe, progress=not args.quiet, output=args.output)
    m = recipe.metric
    print(f"dev {m}: start {result.dev_start:.4f}  best {result.dev_best:.4f}  final {result.dev_final:.4f}")
    if result.mlflow_run_id:
        print(f"mlflow run: {result.mlflow_run_id}")
    print(result.published or result.output_dir)
    return 0
