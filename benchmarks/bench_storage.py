"""Storage cost of training: the same short recipe with its workdir on local disk and in a bucket
of an S3 server on loopback (moto, started here), in one run, at the same checkpoint interval, for
--rounds rounds (the ratio taken within each); then the seconds to save and restore one of its checkpoints on each.

    .venv/bin/python benchmarks/bench_storage.py
    .venv/bin/python benchmarks/bench_storage.py --steps 150 --every 50

Throughput is the engine's own tokens/s over the logging windows after the first, averaged: a
window that holds a checkpoint upload is slower, so the average carries the storage cost. Save /
restore: the run's final checkpoint directory copied with pyarrow.fs (what Ray Train uses) from
local disk to the storage and back, best of 3.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def recipe_for(workdir: str, data: str, args):
    from pipelines.recipe import load_recipe
    return load_recipe("pipelines/recipes/mlm-tiny.yaml", [
        f"workdir={workdir}", "data.source=files", f"data.train=[{data}]", "data.validation_fraction=0.0",
        f"model.hidden_size={args.hidden}", f"model.num_hidden_layers={args.layers}",
        f"model.intermediate_size={4 * args.hidden}", f"optim.batch_size={args.batch_size}",
        f"schedule.max_steps={args.steps}", "schedule.warmup_steps=0", f"schedule.log_every={args.log_every}",
        f"checkpoint.every_steps={args.every}", "checkpoint.keep=2", "tracking.registered_model=bench-storage"])


def train(recipe) -> dict:
    from pipelines.train import run_training
    t0 = time.perf_counter()
    result = run_training(recipe, progress=False)
    rates = [h["tokens_per_s"] for h in result.history if "tokens_per_s" in h]
    steady = rates[1:] or rates
    return {"tokens_per_s": sum(steady) / len(steady), "wall_s": time.perf_counter() - t0, "result": result}


def copy_seconds(src: str, dst: str) -> float:
    import pyarrow.fs as pafs
    best = float("inf")
    for _ in range(3):
        sfs, spath = pafs.FileSystem.from_uri(src)
        dfs, dpath = pafs.FileSystem.from_uri(dst)
        t0 = time.perf_counter()
        pafs.copy_files(spath, dpath, source_filesystem=sfs, destination_filesystem=dfs)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--every", type=int, default=50, help="checkpoint interval (steps)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="local / S3 pairs, the first arm alternating")
    args = p.parse_args()

    from pipelines.corpora import peoples_daily_rows
    from tests.storage.s3server import S3Server

    work = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    corpus = work / "pd.jsonl"
    corpus.write_text("".join(json.dumps({"text": r["text"]}, ensure_ascii=False) + "\n"
                              for r in peoples_daily_rows()[:8000]), encoding="utf-8")
    with S3Server(log_dir=work) as s3:
        s3.create_bucket("bench")
        s3.put("bench", "data/pd.jsonl", corpus.read_bytes())
        os.environ.update(s3.env())            # before Ray starts: the workers inherit it
        os.environ["BERT4RAY_WORKDIR_CACHE"] = str(work / "mirror")
        rounds = []
        for rnd in range(args.rounds):         # the arms alternate which goes first
            arms = {"local": (str(work / f"local{rnd}"), str(corpus)),
                    "s3": (f"s3://bench/work{rnd}", "s3://bench/data/pd.jsonl")}
            order = ["local", "s3"] if rnd % 2 == 0 else ["s3", "local"]
            done = {name: train(recipe_for(*arms[name], args)) for name in order}
            rounds.append(done)
            print(f"round {rnd}: local {done['local']['tokens_per_s']:.0f} tokens/s ({done['local']['wall_s']:.0f} s), "
                  f"S3 {done['s3']['tokens_per_s']:.0f} tokens/s ({done['s3']['wall_s']:.0f} s), S3 / local "
                  f"{done['s3']['tokens_per_s'] / done['local']['tokens_per_s']:.2f}", flush=True)
        def size(d: Path) -> int:
            return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        final = max((d for d in (work / "local0" / "ray").glob("*/checkpoint_*") if d.is_dir()), key=size)
        size_mb = size(final) / 2**20
        save_local = copy_seconds(final.as_uri(), (work / "copy-local").as_uri())
        save_s3 = copy_seconds(final.as_uri(), "s3://bench/copy")
        restore_local = copy_seconds((work / "copy-local").as_uri(), (work / "back-local").as_uri())
        restore_s3 = copy_seconds("s3://bench/copy", (work / "back-s3").as_uri())
    shutil.rmtree(work, ignore_errors=True)
    def span(values, fmt="{:.0f}"):
        return f"{fmt.format(min(values))}–{fmt.format(max(values))}"
    ratios = [r["s3"]["tokens_per_s"] / r["local"]["tokens_per_s"] for r in rounds]
    print(f"{args.steps} steps, checkpoint every {args.every}, 2 workers, hidden {args.hidden} x {args.layers}; "
          f"range over {args.rounds} rounds")
    print("| storage | tokens/s | wall s | checkpoint save s | restore s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for arm, label, save, restore in (("local", "local disk", save_local, restore_local),
                                      ("s3", "S3 on loopback (moto)", save_s3, restore_s3)):
        print(f"| {label} | {span([r[arm]['tokens_per_s'] for r in rounds])} | "
              f"{span([r[arm]['wall_s'] for r in rounds])} | {save:.2f} | {restore:.2f} |")
    print(f"checkpoint size {size_mb:.1f} MB; S3 / local throughput {span(ratios, '{:.2f}')} within a round "
          f"(cost at most {100 * (1 - min(ratios)):.1f} %, goal <= 10 %)")


if __name__ == "__main__":
    main()
