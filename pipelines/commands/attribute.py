"""`bert4ray attribute --model DIR TEXT [TEXT ...]`: Integrated Gradients token attributions.

    bert4ray attribute --model runs/classify/model "这家酒店很干净，服务也好"
    bert4ray attribute --model DIR "质量太差" --target pos --steps 100 --html ig.html --png ig.png

Prints, per text, a table of tokens with their signed scores and L2 norms, then the predicted
label, the attributed target and the completeness delta.
"""

from __future__ import annotations

HELP = "Integrated Gradients for a classifier: token scores as a table, an HTML heat map or a PNG"


def add_arguments(parser) -> None:
    # No choices= lists here: they would import torch for every `bert4ray --help`; the component
    # checks the values and names the valid ones.
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="text(s) to explain")
    parser.add_argument("--model", required=True,
                        help="model trained with the classify task: a directory or an MLflow URI")
    parser.add_argument("--target", default=None,
                        help="class id or label name to explain (default: the predicted one)")
    parser.add_argument("--steps", type=int, default=50, help="integration points (default 50)")
    parser.add_argument("--rule", default="gausslegendre",
                        help="gausslegendre (default), riemann_left, riemann_right, riemann_middle, riemann_trapezoid")
    parser.add_argument("--quantity", default="prob",
                        help="prob (default): the target's softmax probability; logit: its logit")
    parser.add_argument("--baseline", default="pad",
                        help="pad (default): [PAD] tokens with [CLS]/[SEP] kept; zero: zero embeddings")
    parser.add_argument("--baseline-text", default=None,
                        help="use this text as the baseline instead (cut or [PAD]-padded to each input's length)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="interpolation points per forward pass (bounds memory, same results; "
                             "default: about 2048 tokens' worth)")
    parser.add_argument("--max-length", type=int, default=None, help="truncate texts to this many tokens")
    parser.add_argument("--html", default=None, metavar="FILE", help="write the heat-map page here")
    parser.add_argument("--png", default=None, metavar="FILE", help="write a bar chart here")
    parser.add_argument("--json", action="store_true", help="print the results as JSON lines instead")


def run(args) -> int:
    import json
    from pathlib import Path

    from pipelines.cli import UserError

    if args.baseline not in ("pad", "zero"):
        raise UserError(f"--baseline must be 'pad' or 'zero' (or give --baseline-text), got {args.baseline!r}")
    for flag, path in (("--html", args.html), ("--png", args.png)):
        if path and not Path(path).resolve().parent.is_dir():
            raise UserError(f"{flag}: directory of '{path}' does not exist")
    if args.steps < 1:
        raise UserError(f"--steps must be a positive integer, got {args.steps}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {args.batch_size}")

    from components.attribution import Attributor
    from components.attribution_html import save_html, save_png
    from pipelines.model_store import resolve_model
    attributor = Attributor.from_pretrained(resolve_model(args.model))     # a directory or an MLflow URI
    baseline = "text" if args.baseline_text is not None else args.baseline
    results = attributor.attribute_batch(
        args.texts, target=args.target, quantity=args.quantity, baseline=baseline,
        baseline_text=args.baseline_text, rule=args.rule, n_steps=args.steps,
        internal_batch_size=args.batch_size, max_length=args.max_length)

    if args.json:
        for r in results:
            print(json.dumps(r.to_dict(), ensure_ascii=False))
    else:
        _print_tables(results)
    if args.html:
        save_html(results, args.html)
        print(f"heat map -> {args.html}")
    if args.png:
        save_png(results, args.png)
        print(f"bar chart -> {args.png}")
    return 0


def _print_tables(results) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    for r in results:
        table = Table(title=escape(r.text), title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("token")
        table.add_column("score", justify="right")
        table.add_column("norm", justify="right")
        for i, (tok, score, norm) in enumerate(zip(r.tokens, r.scores, r.norms)):
            colour = "green" if score > 0 else "red" if score < 0 else "dim"
            table.add_row(str(i), escape(tok), f"[{colour}]{score:+.5f}[/]", f"{norm:.5f}")
        console.print(table)
        console.print(
            f"label: {escape(r.label)} (p={r.prob:.4f})  target: {escape(r.target_label)} ({r.quantity})  "
            f"F(x)={r.f_input:.5f}  F(baseline)={r.f_baseline:.5f}  delta: {r.delta:.3e}  "
            f"[{r.n_steps} {r.rule} steps, {r.baseline} baseline]")
