"""Storage cost of training: the same short recipe with its workdir on local disk and in a bucket
of an S3 server on loopback (moto, started here), in one run, at the same checkpoint interval;
then the seconds to save and restore one of its checkpoints on each.

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
        local = train(recipe_for(str(work / "local"), str(corpus), args))
        remote = train(recipe_for("s3://bench/work", "s3://bench/data/pd.jsonl", args))
        def size(d: Path) -> int:
            return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        final = max((d for d in (work / "local" / "ray").glob("*/checkpoint_*") if d.is_dir()), key=size)
        size_mb = size(final) / 2**20
        save_local = copy_seconds(final.as_uri(), (work / "copy-local").as_uri())
        save_s3 = copy_seconds(final.as_uri(), "s3://bench/copy")
        restore_local = copy_seconds((work / "copy-local").as_uri(), (work / "back-local").as_uri())
        restore_s3 = copy_seconds("s3://bench/copy", (work / "back-s3").as_uri())
    shutil.rmtree(work, ignore_errors=True)
    ratio = remote["tokens_per_s"] / local["tokens_per_s"]
    print(f"{args.steps} steps, checkpoint every {args.every}, 2 workers, hidden {args.hidden} x {args.layers}")
    print("| storage | tokens/s | wall s | checkpoint save s | restore s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| local disk | {local['tokens_per_s']:.0f} | {local['wall_s']:.0f} | {save_local:.2f} | {restore_local:.2f} |")
    print(f"| S3 on loopback (moto) | {remote['tokens_per_s']:.0f} | {remote['wall_s']:.0f} | {save_s3:.2f} | "
          f"{restore_s3:.2f} |")
    print(f"checkpoint size {size_mb:.1f} MB; S3 / local throughput {ratio:.2f} "
          f"(cost {100 * (1 - ratio):.1f} %, goal <= 10 %)")


if __name__ == "__main__":
    main()
