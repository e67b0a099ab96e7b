"""MGS candidate evaluation: K candidates on Ray actors vs sequentially in the driver's process, and
the memory each way holds.

    .venv/bin/python benchmarks/bench_mgs.py                       # K = 4, random 4 x 256 model
    .venv/bin/python benchmarks/bench_mgs.py --model bert4ray-runs/quickstart/model --k 8

Per candidate, the work is MGS's: regenerate Δ_k from its seed, load θ + Δ_k, decode a batch greedily
(the length forced, so every candidate does the same work), BLEU against the references, log q(Δ_k).
1. sequential: bert4ray's CandidateWorker on the driver's own model, K candidates one after another.
2. actors: `Evaluators` with A actors (each holds the model once; θ and g are put in the object
   store once per step and every actor reads them; candidates travel as seeds), A = 2 and A = K.
Memory: the anchor (wellecks/mgs) keeps K deep copies of the model in one process: measured here as
the resident-size growth of K `copy.deepcopy(model)`; bert4ray holds one model per actor: the
actors' resident sizes are printed whole (Python, torch and Ray's worker included) and beside them
the model's own parameter bytes. Reported as measured on this machine (2 cores: more than 2 busy
actors cannot run faster than 2).
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.common import current_rss_mb, write_cjk_vocab  # noqa: E402
from components.config import ModelConfig  # noqa: E402
from components.mgs import MGSConfig, draw_candidates, noise_scales  # noqa: E402
from components.model import Transformer  # noqa: E402
from pipelines.mgs import CandidateWorker, Evaluators, load_mgs_recipe  # noqa: E402
from pipelines.objectives import Example, GenerationSystem  # noqa: E402


def random_model_dir(tmp: str, layers: int, hidden: int) -> str:
    vocab = write_cjk_vocab(tmp)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=21128, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                      intermediate_size=4 * hidden, max_position_embeddings=128, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, pooler_activation="linear")
    out = os.path.join(tmp, "model")
    Transformer(cfg).eval().save_pretrained(out, metadata={"vocab_file": vocab, "task": "simbert"})
    return out


def examples(n: int, length: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    def sentence() -> str:
        return "".join(chr(0x4E00 + rng.randrange(3000)) for _ in range(length))
    return [Example([sentence()], [sentence(), sentence()]) for _ in range(n)]


def rss_of(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a simbert / dialog model directory (default: random 4 x 256)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--k", type=int, default=4, help="candidates per step")
    p.add_argument("--batch", type=int, default=16, help="examples decoded per candidate")
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)          # one thread per evaluator, in the driver as in each actor

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or random_model_dir(tmp, args.layers, args.hidden)
        system = GenerationSystem.from_pretrained(model_dir)
        batch = examples(args.batch, 16)
        decoding = {"strategy": "greedy", "max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens}
        params = list(system.model.parameters())
        model_mb = sum(t.numel() * t.element_size() for t in params) / 2**20
        _, grads = system.mle_gradient(batch)
        cfg = MGSConfig(num_candidates=args.k)
        sigmas = noise_scales(grads, cfg.noise_scale)
        cands = draw_candidates(cfg, 0)

        def recipe(actors: int):
            return load_mgs_recipe(data={
                "model": model_dir, "data": {"train": "unused.jsonl", "max_length": 64}, "decoding": decoding,
                "mgs": {"num_candidates": args.k},
                "parallel": {"num_actors": actors, "cpus_per_actor": min(1.0, 2.0 / max(actors, 1)),
                             "threads_per_actor": 1}})

        print(f"model: {sum(t.numel() for t in params) / 1e6:.2f} M parameters ({model_mb:.1f} MB float32); "
              f"K = {args.k}; {args.batch} examples x {args.new_tokens} tokens greedy per candidate; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        timings: dict[str, float] = {}
        local = CandidateWorker(system=system)
        theta = [t.detach().clone() for t in params]
        run_local = lambda: local.evaluate(theta, grads, sigmas, cands, batch, "bleu", decoding,  # noqa: E731
                                           cfg.mixture, cfg.density)
        run_local()
        timings["sequential (driver process)"] = statistics.median(_times(run_local, args.repeats))
        actor_rss: dict[int, list[float]] = {}
        for actors in sorted({2, args.k}):
            ev = Evaluators(recipe(actors), system)
            try:
                ev.evaluate(params, grads, sigmas, cands, batch)                    # actors up and warm
                timings[f"{actors} Ray actors"] = statistics.median(
                    _times(lambda ev=ev: ev.evaluate(params, grads, sigmas, cands, batch), args.repeats))
                import ray
                actor_rss[actors] = [rss_of(pid) for pid in ray.get([a.pid.remote() for a in ev.actors])]
            finally:
                ev.close()

        base = timings["sequential (driver process)"]
        print("\n| evaluation of K candidates | seconds | vs sequential |\n| --- | ---: | ---: |")
        for name, t in timings.items():
            print(f"| {name} | {t:.2f} | {base / t:.2f}x |")

        before = current_rss_mb()
        copies = [copy.deepcopy(system.model) for _ in range(args.k)]
        grown = current_rss_mb() - before
        del copies
        print(f"\nmemory: anchor's K = {args.k} deep copies in one process: +{grown:.0f} MB resident "
              f"({grown / args.k:.0f} MB per copy; the model's parameters are {model_mb:.0f} MB)")
        for actors, sizes in actor_rss.items():
            print(f"bert4ray, {actors} actors: one model each; resident per actor process "
                  f"{', '.join(f'{s:.0f}' for s in sizes)} MB (whole process: Python, torch, Ray worker, "
                  f"model {model_mb:.0f} MB)")


def _times(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


if __name__ == "__main__":
    main()
