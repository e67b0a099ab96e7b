"""`bert4ray predict KIND --model M --input IN --output OUT`: offline inference as a Ray Data job.

    bert4ray predict embed --model runs/quickstart/model --input corpus.jsonl --output vectors
    bert4ray predict classify --model runs/classify/model --input 'reviews/*.parquet' --output labels
    bert4ray predict similar --model M --input q.csv --output para --set similar.n=16 --set decoding.top_p=0.9
"""

from __future__ import annotations

import argparse

HELP = "offline inference over JSON Lines / Parquet / CSV files with Ray Data actors, to Parquet"

KIND_HELP = {
    "embed": "unit-length pooled vectors (as SimBERT.encode and /v1/embeddings): column embedding",
    "classify": "a classify model's label and class probabilities: predicted, probabilities",
    "similar": "n sampled paraphrases reranked by cosine (as /v1/similar): similar [{text, score}]",
    "reply": "a dialogue model's reply to a list of turns (or one string): reply, finish_reason",
    "segment": "Perturbed Masking word segmentation: words",
    "parse": "Perturbed Masking dependency and constituency parse: tokens, heads, tree",
    "attribute": "Integrated Gradients of a classifier: tokens, scores, delta, predicted, prob, target",
}

EPILOG = """\
Output: OUT/<input name>.parquet per input file, with every input column and the kind's columns
(vectors as fixed-size lists), good rows only, in input order. Bad rows (missing column, empty
text, longer than the model takes, unreadable line) do not stop the job: they go to
OUT.errors.jsonl as {"file", "row", "reason"} (row = line number in JSON Lines, record number in
CSV, row number in Parquet, from 1).

Restartable: a re-run with the same OUT skips the input files whose output already exists and
predicts only the rest (each output file appears whole, by a rename or one upload, once it is
complete). OUT records the kind, model and settings; a re-run that asks for other ones is refused.

Exit code: 0 all rows predicted; 3 finished with bad rows (the last line says how many); 2 an
input error found before the job started (no such input, unreadable file, missing column, a model
location without config.json, an unknown setting).

IN, OUT and --model may be object-store URIs (s3://bucket/prefix, gs://, abfs://; credentials and
endpoint from the standard environment, e.g. AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL): each read task
opens its part of IN in the bucket, each actor fetches a bucket model into its node's cache, and
every output object is uploaded whole. On a Ray cluster (RAY_ADDRESS) a local IN or model
directory must be at the same path on every node.

MLflow: a run with the counts and timings is logged when MLFLOW_TRACKING_URI is set or with
--mlflow (then to sqlite:///WORKDIR/mlflow.db unless MLFLOW_TRACKING_URI is set).

Settings (--set, repeatable): decoding.* (similar, reply: any DecodingConfig key, e.g.
decoding.top_k=5, decoding.seed=1; without a seed each row is seeded by its text, so runs repeat),
similar.n / similar.k / similar.max_length, reply.max_length / reply.max_history, probe.threshold /
probe.dependency / probe.constituency (segment, parse), attribute.steps / attribute.target /
attribute.baseline / attribute.baseline_text / attribute.rule / attribute.quantity.
"""


def add_arguments(parser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "kinds:\n" + "".join(f"  {k:<10} {v}\n" for k, v in KIND_HELP.items()) + "\n" + EPILOG
    parser.add_argument("kind", choices=list(KIND_HELP), metavar="KIND", help=", ".join(KIND_HELP))
    parser.add_argument("--model", required=True,
                        help="model directory, bucket URI or MLflow URI (models:/name/1, runs:/id/model)")
    parser.add_argument("--input", required=True, metavar="IN",
                        help="a .jsonl / .parquet / .csv file, a directory of them (recursive) or a glob; "
                             "local or a bucket URI")
    parser.add_argument("--output", required=True, metavar="OUT",
                        help="output directory or bucket prefix (see below)")
    parser.add_argument("--column", default="text", help="input column to predict on (default: text)")
    parser.add_argument("--prefix", default="", help="prefix of the output column names (when the input has "
                                                     "columns of the same names)")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per forward pass (default 64)")
    parser.add_argument("--block-rows", type=int, default=1024,
                        help="rows per actor call, sorted by length inside so passes pad little (default 1024)")
    parser.add_argument("--num-actors", type=int, default=2, help="actors, each with its own model (default 2)")
    parser.add_argument("--num-gpus-per-actor", type=float, default=0.0, help="GPUs per actor (default 0: CPU)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="the model's weights in the actors (default float32; bfloat16 / float16 on GPUs)")
    parser.add_argument("--cpus-per-actor", type=float, default=None,
                        help="logical CPUs per actor (default: the cluster's CPUs less 1 for Ray Data's read tasks, "
                             "shared by the actors); torch runs about as many threads")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting, e.g. --set decoding.top_k=5 (repeatable; see below)")
    parser.add_argument("--mlflow", action="store_true", help="log an MLflow run even without MLFLOW_TRACKING_URI")
    parser.add_argument("--workdir", default="bert4ray-runs", help="where --mlflow keeps mlflow.db")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def run(args) -> int:
    from pipelines.predict import PredictJob, prepare, run_predict

    job = PredictJob(args.kind, args.model, args.input, args.output, column=args.column, prefix=args.prefix,
                     batch_size=args.batch_size, block_rows=args.block_rows, num_actors=args.num_actors,
                     num_gpus_per_actor=args.num_gpus_per_actor, dtype=args.dtype, cpus_per_actor=args.cpus_per_actor,
                     overrides=args.overrides, mlflow=args.mlflow, workdir=args.workdir)
    plan = prepare(job)                          # every input check, before Ray starts
    if plan.done:
        print(f"skipping {len(plan.done)} file(s) already in {plan.out_dir}")
    result = run_predict(job, progress=not args.quiet, plan=plan)
    m = result.metrics
    if result.rows:
        print(f"predicted {m['rows_ok']:,} of {m['rows']:,} rows from {result.files_done} file(s) in "
              f"{result.seconds:.1f} s ({m['rows_per_s']:,.0f} rows/s, first rows after {m['startup_seconds']:.1f} s)")
    if result.mlflow_run_id:
        print(f"mlflow run: {result.mlflow_run_id}")
    print(f"output: {result.output}")
    if result.bad_rows:
        print(f"{result.bad_rows:,} bad row(s) -> {result.errors_path}")
        return 3
    print("no bad rows")
    return 0
