"""Softmax attention (PyTorch SDPA, and an explicit softmax(QKᵀ)V) vs bert4ray's linear attention.

    .venv/bin/python benchmarks/bench_attention.py                 # n = 256 ... 16384
    .venv/bin/python benchmarks/bench_attention.py --max-n 4096    # quicker

One head group of 8 heads, d = 64, batch 1, float32, CPU. Every measurement runs in a fresh process
so that its peak resident memory (above the inputs) is its own. Prints time and peak memory per
kernel, the ratios, and the crossover n where linear attention becomes faster.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KERNELS = ("sdpa", "explicit", "linear")


def one(kernel: str, n: int, causal: bool, backward: bool, repeats: int) -> dict:
    import torch

    from benchmarks.common import current_rss_mb, peak_rss_mb, timeit
    from components.attention import causal_linear_attention, linear_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 8, n, 64, requires_grad=backward) for _ in range(3))

    def forward():
        if kernel == "sdpa":
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        if kernel == "explicit":
            s = (q @ k.transpose(-1, -2)) / 8.0                       # (1, 8, n, n)
            if causal:
                s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
            return s.softmax(-1) @ v
        return causal_linear_attention(q, k, v)[0] if causal else linear_attention(q, k, v)

    def step():
        out = forward()
        if backward:
            out.sum().backward()

    base = current_rss_mb()
    seconds = timeit(step, repeats=repeats, warmup=1)
    return {"seconds": seconds, "peak_mb": max(0.0, peak_rss_mb() - base)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-n", type=int, default=16384)
    parser.add_argument("--explicit-max-n", type=int, default=8192,
                        help="the explicit kernel holds n×n scores: 16384 would need > 8 GB per copy")
    parser.add_argument("--one", nargs=4, metavar=("KERNEL", "N", "CAUSAL", "BACKWARD"))
    args = parser.parse_args()
    if args.one:
        kernel, n, causal, backward = args.one
        n = int(n)
        repeats = 3 if n <= 4096 else 1
        print(json.dumps(one(kernel, n, causal == "1", backward == "1", repeats)))
        return

    from benchmarks.common import run_isolated

    ns = [n for n in (256, 512, 1024, 2048, 4096, 8192, 16384) if n <= args.max_n]
    results = {}
    print(f"{'mode':<22}{'n':>7}  " + "  ".join(f"{k + ' s':>11}{k + ' MB':>11}" for k in KERNELS)
          + f"{'sdpa/linear':>13}")
    for causal in (False, True):
        for backward in (False, True):
            mode = ("causal" if causal else "non-causal") + (" fwd+bwd" if backward else " fwd")
            for n in ns:
                row = {}
                for kernel in KERNELS:
                    if kernel == "explicit" and n > args.explicit_max_n:
                        row[kernel] = {"skipped": True}
                        continue
                    row[kernel] = run_isolated(__file__, ["--one", kernel, str(n), str(int(causal)),
                                                          str(int(backward))])
                results[(mode, n)] = row

                def cell(r):
                    if "seconds" not in r:
                        return f"{'-':>11}{'-':>11}"
                    return f"{r['seconds']:>11.4f}{r['peak_mb']:>11.1f}"
                ratio = row["sdpa"].get("seconds", float("nan")) / row["linear"].get("seconds", float("nan"))
                print(f"{mode:<22}{n:>7}  " + "  ".join(cell(row[k]) for k in KERNELS) + f"{ratio:>12.1f}x",
                      flush=True)
            crossover = next((n for n in ns if results[(mode, n)]["linear"].get("seconds", 1e9)
                              < results[(mode, n)]["sdpa"].get("seconds", 0)), None)
            print(f"  crossover ({mode}): linear faster than SDPA from n = {crossover}")
    print("\nsummary (time ratio SDPA / linear, and linear peak MB vs SDPA peak MB):")
    for (mode, n), row in results.items():
        if n in (4096, 16384) and "seconds" in row["linear"] and "seconds" in row["sdpa"]:
            print(f"  {mode:<22} n={n:>6}: {row['sdpa']['seconds'] / row['linear']['seconds']:6.1f}x faster; "
                  f"memory {row['linear']['peak_mb']:.0f} MB vs SDPA {row['sdpa']['peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
