"""`bert4ray sts --model DIR --test FILE --train FILE`: Spearman correlation (x 100) between a SimBERT
model's retrieval-vector cosine and the gold similarity scores of an STS-B file (`s1 \\t s2 \\t score`),
next to character Jaccard and character 1-2-gram TF-IDF cosine (IDF from the train file).

    bert4ray sts --model bert4ray-runs/quickstart/model \\
        --test ../shared/data/sts-b-zh/STS-B.test.data --train ../shared/data/sts-b-zh/STS-B.train.data

The Chinese STS-B comes with shibing624/text2vec (examples/data/STS-B/). Prints the table and logs it to MLflow.
"""

from __future__ import annotations

HELP = "STS-B Spearman of a SimBERT model's cosine against character Jaccard and TF-IDF baselines"


def add_arguments(parser) -> None:
    parser.add_argument("--model", default=None, help="a SimBERT model (directory or MLflow URI); omit for the "
                        "baselines alone")
    parser.add_argument("--test", required=True, help="STS-B file to score: sentence1 \\t sentence2 \\t score")
    parser.add_argument("--train", required=True, help="STS-B train file (IDF of the TF-IDF baseline)")
    parser.add_argument("--workdir", default="bert4ray-runs", help="MLflow store location (default bert4ray-runs)")
    parser.add_argument("--experiment", default="bert4ray-benchmarks")
    parser.add_argument("--no-mlflow", action="store_true", help="print only")


def run(args) -> int:
    from pipelines.public_eval import format_rows, log_report, sts_report

    model_dir = None
    if args.model:
        from pipelines.model_store import resolve_model
        model_dir = resolve_model(args.model)
    report = sts_report(model_dir, args.test, args.train)
    print(f"Spearman x 100 on {int(report['metrics']['pairs'])} pairs of {args.test}")
    print(format_rows(report["table"]))
    if not args.no_mlflow:
        params = {"model": args.model or "", "test": args.test, "train": args.train}
        print(f"mlflow run: {log_report(args.workdir, args.experiment, 'sts', params, report)}")
    return 0
