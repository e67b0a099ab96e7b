"""`bert4ray mgs RECIPE.yaml [--set a.b=c ...]`: MGS fine-tuning towards BLEU / F1.

    bert4ray mgs pipelines/recipes/mgs-simbert.yaml
    bert4ray mgs pipelines/recipes/mgs-simbert.yaml --set mgs.mixture=0      # noise-only ablation

Prints one line per step (cost, candidates, weight entropy, dev score) and the output directory:
model/ (the best model on dev), history.json, recipe.yaml.
"""

from __future__ import annotations

HELP = "MGS: derivative-free fine-tuning of a generating model towards BLEU / F1, candidates on Ray actors"


def add_arguments(parser) -> None:
    parser.add_argument("recipe", help="MGS recipe YAML (see pipelines/recipes/mgs-simbert.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set mgs.beta=10 (repeatable)")
    parser.add_argument("--output", help="output directory (default <workdir>/mgs/<run id>)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args) -> int:
    from pipelines.cli import UserError
    from pipelines.mgs import load_mgs_recipe, run_mgs
    from pipelines.recipe import RecipeError

    try:
        recipe = load_mgs_recipe(args.recipe, args.overrides)
    except RecipeError as exc:
        raise UserError(str(exc)) from None
    result = run_mgs(recipe, progress=not args.quiet, output=args.output)
    m = recipe.metric
    print(f"dev {m}: start {result.dev_start:.4f}  best {result.dev_best:.4f}  final {result.dev_final:.4f}")
    if result.mlflow_run_id:
        print(f"mlflow run: {result.mlflow_run_id}")
    print(result.output_dir)
    return 0
