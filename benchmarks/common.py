"""Small helpers shared by the benchmark scripts: timing and peak-memory measurement."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time


def timeit(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of fn() in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_isolated(script: str, args: list[str]) -> dict:
    """Run `python script args...` in a fresh process (so its peak RSS is its own) and parse the
    JSON object it prints last."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_cjk_vocab(directory: str, size: int = 21128) -> str:
    """A BERT vocabulary of `size` tokens (the specials, then CJK characters from U+4E00, the size of
    bert-base-chinese's) written to directory/vocab.txt; returns its path."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + size - len(specials))]
    path = os.path.join(directory, "vocab.txt")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(specials + chars) + "\n")
    return path
