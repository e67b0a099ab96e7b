"""Softmax attention (PyTorch SDPA, and an explicit softmax(QKᵀ)V) vs bert4ray's linear attention.

    .venv/bin/python benchmarks/bench_attention.py                 # n = 256 ... 16384
    .venv/bin/python benchmarks/bench_attention.py --max-n 4096    # quicker

One head group of 8 heads, d = 64, batch 1, float32, CPU. Every measurement runs in a fresh process
so that its peak resident memory (above the inputs) is its own: the kernel is first run once on
n = 64 (library code paged in, thread pools started), then the peak (VmHWM) is reset and measured
over the timed calls at n, relative to the resident size with the inputs allocated. Prints time
and peak memory per kernel, the ratios, and the crossover n where linear attention becomes faster.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KERNELS = ("sdpa", "explicit", "linear")


def _vm_hwm_mb() -> float | None:
    """Peak resident memory of this process since the last reset (VmHWM), or None if unreadable."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        return None


def _reset_peak() -> bool:
    """Reset VmHWM to the current resident size (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def one(kernel: str, n: int, causal: bool, backward: bool, repeats: int, clock: str = "wall") -> dict:
    import gc
    import statistics
    import time

    import torch

    from benchmarks.common import current_rss_mb, peak_rss_mb, timeit
    from components.attention import causal_linear_attention, linear_attention

    def make_step(n: int):
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
        return step

    # Warm up on a small input first, so that library code paged in and thread pools started by
    # the first call are not counted as the kernel's memory: what remains is the data it allocates.
    small = make_step(64)
    small()
    small()
    del small
    step = make_step(n)
    gc.collect()
    base = current_rss_mb()
    reset = _reset_peak()
    if clock == "cpu":                   # this process's CPU time (meant for --threads 1 under load)
        step()
        times = []
        for _ in range(repeats):
            t0 = time.process_time()
            step()
            times.append(time.process_time() - t0)
        seconds = statistics.median(times)
    else:
        seconds = timeit(step, repeats=repeats, warmup=1)
    peak = _vm_hwm_mb() if reset else None
    peak = peak if peak is not None else peak_rss_mb()
    return {"seconds": seconds, "peak_mb": max(0.0, peak - base)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-n", type=int, default=16384)
    parser.add_argument("--explicit-max-n", type=int, default=8192,
                        help="the explicit kernel holds n×n scores: 16384 would need > 8 GB per copy")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per measurement, median taken (default: 3 up to n = 4096, then 1)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: the measuring process's CPU time instead of wall time; meant for "
                             "--threads 1 on a loaded machine")
    parser.add_argument("--one", nargs=4, metavar=("KERNEL", "N", "CAUSAL", "BACKWARD"))
    args = parser.parse_args()
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.one:
        kernel, n, causal, backward = args.one
        n = int(n)
        repeats = args.repeats or (3 if n <= 4096 else 1)
        print(json.dumps(one(kernel, n, causal == "1", backward == "1", repeats, args.clock)))
        return

    from benchmarks.common import run_isolated

    ns = [n for n in (256, 512, 1024, 2048, 4096, 8192, 16384) if n <= args.max_n]
    extra = ["--threads", str(args.threads)] if args.threads else []
    extra += ["--repeats", str(args.repeats)] if args.repeats else []
    extra += ["--clock", args.clock]
    print(f"load average at the start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"threads {args.threads or 'default'}, {args.clock} clock")
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
                                                          str(int(backward))] + extra)
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
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print("\nsummary (time ratio SDPA / linear, and linear peak MB vs SDPA peak MB):")
    for (mode, n), row in results.items():
        if n in (4096, 16384) and "seconds" in row["linear"] and "seconds" in row["sdpa"]:
            print(f"  {mode:<22} n={n:>6}: {row['sdpa']['seconds'] / row['linear']['seconds']:6.1f}x faster; "
                  f"memory {row['linear']['peak_mb']:.0f} MB vs SDPA {row['sdpa']['peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
