"""Serve throughput and latency with dynamic batching on vs off, in one run: a bounded load
generator on loopback at several concurrencies against /v1/similar and /v1/search.

    .venv/bin/python benchmarks/bench_serve.py
    .venv/bin/python benchmarks/bench_serve.py --untrained-size 256x4     # more compute per request
    .venv/bin/python benchmarks/bench_serve.py --model DIR --index DIR --concurrency 1,8,32 --per-client 16
    .venv/bin/python benchmarks/bench_serve.py --compute-ceiling 48x2,312x4,384x6,768x12   # no Serve

Starts a local Ray and Serve on 127.0.0.1 (a free port) with two copies of the application side by
side: "on" (route prefix /on, `batching.enabled: true`) and "off" (/off, `batching.enabled:
false`), same model, index, replicas and limits. Without --model it trains a tiny SimBERT (the
tests' recipe, a few seconds) and indexes its corpus. For every route and concurrency the two are
measured back to back (each cell after --warmup unmeasured requests), for --rounds rounds, the
arm that goes first alternating from round to round; the tables give the range
over the rounds (min–max) of each arm and of the on/off ratio taken within a round, so that load from
other jobs on the machine hits both arms of a ratio alike. Every cell
is bounded: at most max(--min-requests, --per-client × concurrency) requests and --cell-timeout
seconds. At concurrency 1 (--c1 paired, the default) each round is one cell whose requests
alternate between the arms, each body sent to both. Goals: batching on ≥ 0.95× the throughput of
batching off at concurrency 1 (an idle
deployment dispatches at once), and as high as it goes at concurrency 32.

--compute-ceiling measures, in this process and without Serve, what batching saves of the model's
own work per request (32 requests one by one vs in one batch) for models of the given sizes: the
most that batching on can gain once a request's model work outweighs Serve's per-request work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from tests.tiny_training import GROUPS  # noqa: E402

IDLE_GOAL = 0.95


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def untrained_simbert(out_dir: Path, vocab: Path, size: str) -> Path:
    """A randomly initialised SimBERT-shaped model, HIDDENxLAYERS (heads of 64, FFN 4 × hidden):
    the per-request compute of a larger model, for throughput only (its outputs mean nothing)."""
    import torch

    from components.config import ModelConfig
    from components.model import Transformer
    from components.tokenizer import Tokenizer

    hidden, layers = (int(x) for x in size.lower().split("x"))
    tok = Tokenizer(vocab)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden,
                      max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                      pooler_activation="linear", eos_token_id=tok.sep_id)
    torch.manual_seed(0)
    Transformer(cfg).eval().save_pretrained(out_dir, metadata={"vocab_file": str(vocab), "task": "simbert"})
    return out_dir


def prepare_model(workdir: Path, steps: int, size: str | None) -> tuple[Path, Path]:
    """A tiny trained SimBERT (as the serving tests build it), or an untrained one of `size`, and an
    index of the tests' corpus."""
    from components.index import VectorIndex
    from components.simbert import SimBERT
    from components.weights import model_fingerprint
    from tests.conftest import make_vocab
    from tests.tiny_training import train_tiny_simbert

    vocab = make_vocab(workdir / "vocab.txt")
    model_dir = untrained_simbert(workdir / "model", vocab, size) if size else \
        train_tiny_simbert(workdir / "model", vocab, steps=steps)
    sim = SimBERT.from_pretrained(model_dir)
    texts = [t for g in GROUPS for t in g]
    index = VectorIndex(sim.model.config.hidden_size, model_fingerprint(model_dir))
    index.add(sim.encode(texts), [f"g{i // 3}-{i % 3}" for i in range(len(texts))], texts)
    index.save(workdir / "index")
    return model_dir, workdir / "index"


def compute_ceiling(sizes: list[str], n: int, k: int, max_new_tokens: int) -> None:
    import torch

    from components.simbert import SimBERT
    from tests.conftest import make_vocab

    texts = [t for g in GROUPS for t in g]
    requests = [texts[i % len(texts)] for i in range(32)]
    decoding = {"max_new_tokens": max_new_tokens, "seed": 1}

    def per_request(fn, count: int) -> float:
        fn()                                                      # warm-up
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) / count * 1000

    def row(sim: SimBERT) -> tuple[float, float, float, float]:
        few = requests[:8]                                        # alone is slow at the larger sizes
        return (per_request(lambda: [sim.encode([q]) for q in requests], 32),
                per_request(lambda: sim.encode(requests), 32),
                per_request(lambda: [sim.similar_many([q], n=n, k=k, decoding=decoding) for q in few], 8),
                per_request(lambda: sim.similar_many(requests, n=n, k=k, decoding=decoding), 32))

    print(f"Model work per request, ms (torch threads {torch.get_num_threads()}; similar: n={n}, "
          f"{max_new_tokens} tokens, k={k}):")
    print("| model | encode alone | encode in 32 | saved | similar alone | similar in 32 | saved |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="bench-ceiling-") as tmp:
        vocab = make_vocab(Path(tmp) / "vocab.txt")
        for size in sizes:
            enc1, enc32, sim1, sim32 = row(SimBERT.from_pretrained(untrained_simbert(Path(tmp) / size, vocab, size)))
            print(f"| {size} | {enc1:.2f} | {enc32:.2f} | {enc1 / enc32:.2f}× | {sim1:.2f} | {sim32:.2f} | "
                  f"{sim1 / sim32:.2f}× |", flush=True)


def bodies(route: str, n: int, k: int, max_new_tokens: int):
    texts = [t for g in GROUPS for t in g]
    if route == "/v1/search":
        return lambda i: {"query": texts[i % len(texts)], "k": k}
    # Request i carries seed i: both arms sample the same candidates for the same request, so a
    # cell's work does not depend on the draw (seeds never split a batch).
    return lambda i: {"text": texts[i % len(texts)], "n": n, "k": k,
                      "decoding": {"max_new_tokens": max_new_tokens, "seed": i}}


async def run_cell(base: str, route: str, make_body, concurrency: int, total: int, timeout_s: float) -> dict:
    """`concurrency` clients, each sending its next request as soon as the previous one answers,
    until `total` requests were sent or `timeout_s` passed."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        deadline = time.perf_counter() + timeout_s

        async def client_loop():
            nonlocal sent, errors
            while sent < total and time.perf_counter() < deadline:
                i = sent
                sent += 1
                t0 = time.perf_counter()
                try:
                    r = await (client.get(route) if make_body is None else client.post(route, json=make_body(i)))
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {"requests": len(latencies), "errors": errors, "seconds": wall,
            "throughput": len(latencies) / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99))}


async def paired_cell(base: str, route: str, make_body, total: int, timeout_s: float) -> dict[str, dict]:
    """Concurrency 1, both arms in one cell: request i goes to one arm and then, with the same body,
    to the other (the arm that goes first alternating), so that the machine's drift during the cell
    hits both alike. An arm's throughput is its requests over the sum of their latencies (what one
    client sending back to back gets)."""
    lat: dict[str, list[float]] = {"on": [], "off": []}
    errors = {"on": 0, "off": 0}
    async with httpx.AsyncClient(timeout=60) as client:
        deadline = time.perf_counter() + timeout_s
        for i in range(total):
            if time.perf_counter() > deadline:
                break
            for mode in (("on", "off") if i % 2 == 0 else ("off", "on")):
                t0 = time.perf_counter()
                try:
                    ok = (await client.post(f"{base}/{mode}{route}", json=make_body(i))).status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    lat[mode].append(time.perf_counter() - t0)
                else:
                    errors[mode] += 1
    out = {}
    for mode, values in lat.items():
        ms = np.array(values) * 1000 if values else np.array([float("nan")])
        out[mode] = {"requests": len(values), "errors": errors[mode], "seconds": float(sum(values)),
                     "throughput": len(values) / max(sum(values), 1e-9), "p50_ms": float(np.percentile(ms, 50)),
                     "p99_ms": float(np.percentile(ms, 99))}
    return out


def settle(base: str, routes: list[str], args) -> None:
    """Unmeasured traffic to both arms, alternating, for --settle seconds. Batching on measured
    0.82-0.93x of off at concurrency 1 on /v1/similar in the first ~100 s after Serve started, in
    two runs, and within noise after; rounds measure the steady state."""
    end = time.perf_counter() + args.settle
    while time.perf_counter() < end:
        for route in routes:
            make_body = bodies(route, args.n, args.k, args.max_new_tokens)
            for mode in ("on", "off"):
                asyncio.run(run_cell(f"{base}/{mode}", route, make_body, 1, 20, args.cell_timeout))
    if args.settle > 0:
        print(f"settled for {args.settle:g} s (unmeasured traffic to both arms)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="SimBERT model directory or MLflow URI (default: train a tiny one)")
    p.add_argument("--index", help="index built with --model (default: index the tiny corpus)")
    p.add_argument("--steps", type=int, default=60, help="training steps of the tiny model")
    p.add_argument("--untrained-size", metavar="HIDDENxLAYERS",
                   help="instead of the tiny trained model, an untrained one of this size (e.g. 256x4)")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--routes", default="/v1/similar,/v1/search")
    p.add_argument("--per-client", type=int, default=16, help="requests per client and cell")
    p.add_argument("--min-requests", type=int, default=96, help="at least this many requests per cell")
    p.add_argument("--cell-timeout", type=float, default=120, help="seconds at most per cell")
    p.add_argument("--c1", choices=("paired", "cells"), default="paired",
                   help="concurrency 1: alternate single requests between the arms in one cell (paired), "
                        "or one cell per arm like the other levels")
    p.add_argument("--settle", type=float, default=120,
                   help="seconds of unmeasured traffic to both arms after Serve starts, before any cell")
    p.add_argument("--warmup", type=int, default=50, help="unmeasured requests before each cell (at least 2 per client)")
    p.add_argument("--rounds", type=int, default=3,
                   help="measure every cell this many times (on and off alternating); the tables give the "
                        "range over the rounds")
    p.add_argument("--n", type=int, default=8, help="/v1/similar: candidates sampled per request")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=16, help="/v1/similar: decoding steps")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--num-cpus", type=float, default=0.5, help="logical CPUs per model replica")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--compute-ceiling", metavar="SIZES",
                   help="only measure, without Serve, the model work batching saves for untrained models of "
                        "these sizes (HIDDENxLAYERS,...)")
    args = p.parse_args()
    if args.compute_ceiling:
        compute_ceiling(args.compute_ceiling.split(","), args.n, args.k, args.max_new_tokens)
        return
    levels = [int(c) for c in args.concurrency.split(",")]
    routes = args.routes.split(",")

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from serving.app import AppArgs, build_app

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        if args.model:
            model, index = args.model, args.index
        else:
            t0 = time.perf_counter()
            model, index = prepare_model(Path(tmp), args.steps, args.untrained_size)
            what = f"untrained {args.untrained_size} SimBERT" if args.untrained_size else "tiny SimBERT trained"
            print(f"{what} and index ready in {time.perf_counter() - t0:.1f} s", flush=True)
        repo = str(Path(__file__).resolve().parents[1])
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 1024**2,
                 runtime_env={"env_vars": {"PYTHONPATH": repo}})
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        results = []
        ceiling = float("nan")
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            limits = {"max_n": max(64, args.n), "max_k": 100, "max_new_tokens": max(64, args.max_new_tokens),
                      "timeout_s": 120}
            for mode, enabled in (("on", True), ("off", False)):
                app_args = AppArgs(model=str(model), index=str(index) if index else None, limits=limits,
                                   batching={"enabled": enabled, "max_batch_size": args.max_batch_size,
                                             "batch_wait_timeout_s": args.batch_wait_ms / 1000},
                                   scaling={"num_replicas": 1, "num_cpus": args.num_cpus})
                serve.run(build_app(app_args), name=f"batching-{mode}", route_prefix=f"/{mode}", blocking=False)
            print(f"Serve on {base}: /on (batching, max_batch_size {args.max_batch_size}, wait "
                  f"{args.batch_wait_ms:g} ms) and /off (no batching)", flush=True)

            settle(base, routes, args)
            for route in routes:
                make_body = bodies(route, args.n, args.k, args.max_new_tokens)
                for c in levels:
                    total = max(args.min_requests, args.per_client * c)
                    for rnd in range(args.rounds):
                        if c == 1 and args.c1 == "paired":
                            pair = asyncio.run(paired_cell(base, route, make_body, total, 2 * args.cell_timeout))
                            for mode in ("on", "off"):
                                cell = dict(pair[mode], route=route, concurrency=1, batching=mode, round=rnd)
                                print(f"  {route:12s} c=1   batching {mode:3s} round {rnd} (paired): "
                                      f"{cell['throughput']:7.1f} req/s  p50 {cell['p50_ms']:7.1f} ms  "
                                      f"p99 {cell['p99_ms']:7.1f} ms  ({cell['requests']} ok, {cell['errors']} errors)",
                                      flush=True)
                                results.append(cell)
                            continue
                        # The arm that goes first alternates, so that drift over the run (caches
                        # warming, other load) does not always favour the same arm.
                        for mode in (("on", "off") if rnd % 2 == 0 else ("off", "on")):
                            warm = asyncio.run(run_cell(f"{base}/{mode}", route, make_body, c,
                                                        max(2 * c, args.warmup), args.cell_timeout))
                            if warm["errors"]:
                                raise RuntimeError(f"warm-up of {mode}{route} failed: {warm}")
                            cell = asyncio.run(run_cell(f"{base}/{mode}", route, make_body, c, total,
                                                        args.cell_timeout))
                            cell.update(route=route, concurrency=c, batching=mode, round=rnd)
                            print(f"  {route:12s} c={c:<3d} batching {mode:3s} round {rnd}: "
                                  f"{cell['throughput']:7.1f} req/s  p50 {cell['p50_ms']:7.1f} ms  "
                                  f"p99 {cell['p99_ms']:7.1f} ms  ({cell['requests']} ok, {cell['errors']} errors, "
                                  f"{cell['seconds']:.1f} s)", flush=True)
                            results.append(cell)
            # The ceiling of the HTTP path alone (proxy + FastAPI ingress, no model call): what
            # batching can at most approach when the model's own work is small.
            top = max(levels)
            served = {mode: {m["capability"]: m["served"] for m in
                             httpx.get(f"{base}/{mode}/v1/models", timeout=30).json()["data"]} for mode in ("on", "off")}
            ceiling = max(asyncio.run(run_cell(f"{base}/on", "/healthz", None, top, max(256, 8 * top),
                                               args.cell_timeout))["throughput"] for _ in range(args.rounds))
        finally:
            serve.shutdown()
            ray.shutdown()

    def cells_of(route: str, c: int, mode: str) -> list[dict]:
        return sorted((r for r in results if (r["route"], r["concurrency"], r["batching"]) == (route, c, mode)),
                      key=lambda r: r["round"])

    def span(values: list[float], fmt: str = "{:.1f}") -> str:
        return f"{fmt.format(min(values))}–{fmt.format(max(values))}"

    def ratios(route: str, c: int) -> list[float]:
        return [on["throughput"] / off["throughput"] for on, off in zip(cells_of(route, c, "on"), cells_of(route, c, "off"))]

    print()
    print(f"Range over {args.rounds} interleaved rounds (min–max); the ratio is taken within each round.")
    print("| route | concurrency | on req/s | off req/s | on / off | p50 on / off ms | p99 on / off ms | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for route in routes:
        for c in levels:
            on, off = cells_of(route, c, "on"), cells_of(route, c, "off")
            med = lambda cells, key: float(np.median([x[key] for x in cells]))  # noqa: E731
            print(f"| `{route}` | {c} | {span([x['throughput'] for x in on])} | {span([x['throughput'] for x in off])} | "
                  f"{span(ratios(route, c), '{:.2f}')}× | {med(on, 'p50_ms'):.1f} / {med(off, 'p50_ms'):.1f} | "
                  f"{med(on, 'p99_ms'):.1f} / {med(off, 'p99_ms'):.1f} | {sum(x['errors'] for x in on + off)} |")
    print("(latencies: median over the rounds)")
    for mode in ("on", "off"):
        print(f"batching {mode}: mean model batch " + ", ".join(
            f"{cap} {c['requests'] / max(1, c['batches']):.1f} ({c['requests']} requests)" for cap, c in served[mode].items()))
    print(f"HTTP path alone (GET /healthz: proxy + ingress, no model call) at concurrency {top}: "
          f"{ceiling:.1f} req/s")
    for route in routes:
        if 1 in levels:
            low = min(ratios(route, 1))
            print(f"{route}: batching on / off at concurrency 1: {span(ratios(route, 1), '{:.2f}')}× "
                  f"({'meets' if low >= IDLE_GOAL else 'misses'} the goal of ≥ {IDLE_GOAL:g}× in every round)")
        print(f"{route}: batching on / off at concurrency {top}: {span(ratios(route, top), '{:.2f}')}×")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
