"""Training-engine overhead: `bert4ray train` (Ray Train + DeepSpeed ZeRO-2 on CPU, Ray Data
streaming) vs a plain PyTorch loop on the same model, data, masking and optimizer, in one run;
then the same recipe on 2 workers.

    .venv/bin/python benchmarks/bench_train.py
    .venv/bin/python benchmarks/bench_train.py --steps 120 --batch-size 32

The model and data are those of `pipelines/recipes/mlm-tiny.yaml` (People's Daily, MLM, 64-token
rows, hidden 64 x 2 layers), made a little wider by default (`--hidden 256 --layers 4`) so the
compute per step is not dwarfed by Python. Throughput is tokens/s over the steps after the first
logging window (the engine's own `tokens_per_s` metric; the plain loop is timed the same way),
so start-up (Ray, DeepSpeed's op build, data tokenization) is reported separately as wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402


def recipe_for(workdir: Path, corpus: Path, args, workers: int):
    from pipelines.recipe import load_recipe
    return load_recipe("pipelines/recipes/mlm-tiny.yaml", [
        f"workdir={workdir}", "data.source=files", f"data.train=[{corpus}]", "data.validation_fraction=0.0",
        f"model.hidden_size={args.hidden}", f"model.num_hidden_layers={args.layers}",
        f"model.intermediate_size={4 * args.hidden}", "model.hidden_dropout_prob=0.0",
        "model.attention_probs_dropout_prob=0.0", f"optim.batch_size={args.batch_size}",
        f"schedule.max_steps={args.steps}", "schedule.warmup_steps=0", f"schedule.log_every={args.log_every}",
        f"scaling.num_workers={workers}", "checkpoint.every_steps=0", "tracking.registered_model=bench-mlm"])


def engine(recipe) -> dict:
    from pipelines.train import run_training
    t0 = time.perf_counter()
    result = run_training(recipe, progress=False)
    wall = time.perf_counter() - t0
    rates = [h["tokens_per_s"] for h in result.history if "tokens_per_s" in h]
    steady = rates[1:] or rates                       # the first window holds the warm-up
    return {"tokens_per_s": sum(steady) / len(steady), "wall_s": wall}


def plain_loop(recipe, vocab_text: str, rows: list[dict], log_every: int) -> dict:
    """What a user writes without bert4ray: same tokenizer, collate (masking), model, AdamW."""
    from components.config import ModelConfig
    from components.model import Transformer
    from pipelines.data import tokenizer_from_text
    from pipelines.tasks import get_task
    from pipelines.worker import build_optimizer

    torch.set_num_threads(int(recipe.scaling.cpus_per_worker))
    tok = tokenizer_from_text(vocab_text)
    task = get_task("mlm")(recipe.task.options)
    m = recipe.model
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_hidden_layers,
                      num_attention_heads=m.num_attention_heads, intermediate_size=m.intermediate_size,
                      max_position_embeddings=m.max_position_embeddings, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = Transformer(cfg).train()
    opt = build_optimizer(model, recipe)
    encoded = [task.encode(r, tok, recipe.data.max_length) for r in rows]
    bs, g = recipe.optim.batch_size, torch.Generator().manual_seed(0)
    rates, tokens, t0 = [], 0, time.perf_counter()
    for step in range(recipe.schedule.max_steps):
        batch = task.collate(encoded[(step * bs) % (len(encoded) - bs):][:bs], tok, g)
        loss = task.loss_fn(model, batch, None)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.optim.max_grad_norm)
        opt.step()
        tokens += task.count_tokens(batch)
        if (step + 1) % log_every == 0:
            rates.append(tokens / (time.perf_counter() - t0))
            tokens, t0 = 0, time.perf_counter()
    steady = rates[1:] or rates
    return {"tokens_per_s": sum(steady) / len(steady)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=90)
    p.add_argument("--log-every", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--rows", type=int, default=6000)
    args = p.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    from pipelines.corpora import peoples_daily_rows
    from pipelines.train import init_ray
    init_ray(3)              # 2 workers + 1 CPU for Ray Data, for both runs of this one Ray
    rows = [{"text": r["text"]} for r in peoples_daily_rows()[:args.rows]]
    with tempfile.TemporaryDirectory(prefix="b4r-bench-") as d:
        corpus = Path(d) / "pd.jsonl"
        corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        one = engine(recipe_for(Path(d) / "w1", corpus, args, 1))
        vocab_text = next((Path(d) / "w1" / "runs").glob("*/vocab.txt")).read_text(encoding="utf-8")
        plain = plain_loop(recipe_for(Path(d) / "w1", corpus, args, 1), vocab_text, rows, args.log_every)
        two = engine(recipe_for(Path(d) / "w2", corpus, args, 2))
    print(f"MLM, {args.layers} layers x hidden {args.hidden}, batch {args.batch_size} x 64 tokens per worker, "
          f"{args.steps} steps, tokens/s after the first {args.log_every}-step window\n")
    print("| run | tokens/s | wall s (incl. start-up) |\n| --- | ---: | ---: |")
    print(f"| plain PyTorch loop, 1 process | {plain['tokens_per_s']:,.0f} | |")
    print(f"| bert4ray train, 1 worker | {one['tokens_per_s']:,.0f} | {one['wall_s']:.0f} |")
    print(f"| bert4ray train, 2 workers | {two['tokens_per_s']:,.0f} | {two['wall_s']:.0f} |")
    overhead = 1 - one["tokens_per_s"] / plain["tokens_per_s"]
    print(f"\nengine overhead at 1 worker: {overhead:+.1%} of the plain loop's throughput (goal <= 10 %); "
          f"2 workers / 1 worker: {two['tokens_per_s'] / one['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
