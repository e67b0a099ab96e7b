"""Encoder forward+backward throughput: bert4ray vs transformers.BertForMaskedLM, same config and
weights, in one run; plus the achieved FLOP/s as a fraction of a plain torch.matmul peak.

    .venv/bin/python benchmarks/bench_encoder.py
    .venv/bin/python benchmarks/bench_encoder.py --layers 4 --hidden 256 --batch 16 --seq 128 --repeats 10

Both models run the MLM head over every position and take the same loss, so the work is identical;
the two are timed alternately so that load on the machine hits both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from transformers import BertConfig, BertForMaskedLM  # noqa: E402

from components.model import Transformer  # noqa: E402


def train_flops(layers: int, hidden: int, inter: int, vocab: int, batch: int, seq: int) -> float:
    """Matmul FLOPs of one forward+backward (backward = 2 × forward)."""
    per_token_layer = 2 * (4 * hidden * hidden + 2 * hidden * inter) + 2 * 2 * seq * hidden
    head = 2 * (hidden * hidden + hidden * vocab)
    return 3 * batch * seq * (layers * per_token_layer + head)


def matmul_peak(size: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=21128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=8)
    args = p.parse_args()

    torch.manual_seed(0)
    hf_cfg = BertConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=args.heads, intermediate_size=4 * args.hidden,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    hf = BertForMaskedLM(hf_cfg).train()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = Transformer.from_pretrained(d).train()
    ids = torch.randint(5, args.vocab, (args.batch, args.seq))
    seg = torch.zeros_like(ids)
    am = torch.ones_like(ids)
    labels = torch.randint(5, args.vocab, (args.batch, args.seq))

    def step_ours():
        logits = ours(ids, seg, am).logits
        torch.nn.functional.cross_entropy(logits.view(-1, args.vocab), labels.view(-1)).backward()

    def step_hf():
        logits = hf(input_ids=ids, token_type_ids=seg, attention_mask=am).logits
        torch.nn.functional.cross_entropy(logits.view(-1, args.vocab), labels.view(-1)).backward()

    for f in (step_ours, step_hf):
        f()
    times = {"bert4ray": [], "transformers": []}
    for _ in range(args.repeats):
        for name, f in (("bert4ray", step_ours), ("transformers", step_hf)):
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    tokens = args.batch * args.seq
    flops = train_flops(args.layers, args.hidden, 4 * args.hidden, args.vocab, args.batch, args.seq)
    peak = matmul_peak()
    print(f"config: {args.layers} layers, hidden {args.hidden}, vocab {args.vocab}, batch {args.batch} x {args.seq}, "
          f"torch threads {torch.get_num_threads()}")
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, t in med.items():
        print(f"{name:<13} {tokens / t:10.0f} tokens/s  ({t * 1000:.1f} ms/step)  "
              f"{flops / t / 1e9:6.1f} GFLOP/s = {flops / t / peak:.0%} of matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"ratio bert4ray / transformers: {med['transformers'] / med['bert4ray']:.2f}x")


if __name__ == "__main__":
    main()
