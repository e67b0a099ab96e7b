"""Decoding throughput: bert4ray's cached decoder against full recomputation, against
`transformers.BertLMHeadModel.generate`, and n samples in one call against n single calls.

    .venv/bin/python benchmarks/bench_generate.py                    # all three parts
    .venv/bin/python benchmarks/bench_generate.py --part hf --repeats 5
    .venv/bin/python benchmarks/bench_generate.py --part cache --layers 12 --hidden 768 --heads 12 --batches 1

One randomly initialised BERT (by default 4 layers, hidden 256, 4 heads, FFN 1024, vocab 21128, 512
positions; the third command above is the shape of bert-base / SimBERT), built as a
`transformers.BertLMHeadModel(is_decoder=True)`, saved with `save_pretrained` and loaded by
bert4ray, so both libraries hold the same weights. Sources are 32 random token ids (no padding).
The length is forced (`min_new_tokens = max_new_tokens`, so EOS can never win) and every output is
exactly N tokens: both sides do the same number of model calls. Competitors are timed alternately
(median of `--repeats`) so that load on the machine hits both alike.

1. cache: UniLM (SimBERT) greedy decoding, `generate` with its cache vs. the anchors' decoder
   (bert4keras `AutoRegressiveDecoder`, CDial-GPT `infer.py`): call the model on the whole
   sequence every step and keep the last position's logits. Two recompute references: "anchor"
   computes the LM head over every position (as those decoders do), "last" only over the last one.
   All three must produce the same tokens.
2. hf: causal greedy decoding, `generate(mask_mode="causal")` vs. `BertLMHeadModel.generate`
   (its DynamicCache, SDPA attention, logits of the last position only); same tokens asserted.
3. samples: 32 top-k samples of one UniLM source in one call (source encoded once, cache expanded
   to 32 rows) vs. 32 calls of one sample each.
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
from transformers import BertConfig, BertLMHeadModel  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from components.decoding import DecodingConfig, generate  # noqa: E402
from components.model import Transformer  # noqa: E402

EOS = 102          # [SEP] in bert-base-chinese's vocabulary
PAD = 0


def build_models(args):
    torch.manual_seed(args.seed)
    cfg = BertConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                     num_attention_heads=args.heads, intermediate_size=4 * args.hidden,
                     max_position_embeddings=args.max_positions, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, is_decoder=True, pad_token_id=PAD,
                     eos_token_id=EOS)
    hf = BertLMHeadModel(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = Transformer.from_pretrained(d).eval()
    return ours, hf


def sources(batch: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(106, vocab, (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = 101, EOS                     # [CLS] ... [SEP]
    return ids


CLOCK = time.perf_counter          # --clock cpu: time.process_time


def timed_alternately(fns: dict, repeats: int, warmup: bool = True) -> tuple[dict, dict]:
    """Run every fn once (warm-up, result kept), then `repeats` rounds of all of them in turn.
    Returns (median seconds per name, first result per name)."""
    results = {name: fn() for name, fn in fns.items()} if warmup else {}
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = CLOCK()
            out = fn()
            times[name].append(CLOCK() - t0)
            results.setdefault(name, out)
    return {name: statistics.median(t) for name, t in times.items()}, results


# --- 1. cached vs full recomputation ------------------------------------------------------------

@torch.no_grad()
def recompute_greedy(model, src: torch.Tensor, new_tokens: int, head: str) -> list[list[int]]:
    """The anchors' decoder: every step runs the model over source + everything generated so far
    (UniLM mask, segment 1 for the target) and takes the last position's logits. `head="all"`
    computes the LM head over every position (bert4keras / CDial-GPT), `"last"` only the last."""
    B, S = src.shape
    ids, seg = src, torch.zeros_like(src)
    for _ in range(new_tokens):
        out = model(ids, seg, mask_mode="unilm", return_logits=head == "all")
        logits = out.logits[:, -1] if head == "all" else model.lm_logits(out.last_hidden_state[:, -1])
        logits[:, EOS] = float("-inf")                   # min_new_tokens = max_new_tokens
        nxt = logits.argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
        seg = torch.cat([seg, torch.ones_like(nxt)], dim=1)
    return ids[:, S:].tolist()


def cached_greedy(model, src: torch.Tensor, new_tokens: int, mask_mode: str = "unilm") -> list[list[int]]:
    cfg = DecodingConfig(strategy="greedy", max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    gens = generate(model, src, torch.zeros_like(src), torch.ones_like(src), cfg, eos_token_id=EOS,
                    mask_mode=mask_mode, target_segment_id=1 if mask_mode == "unilm" else 0)
    return [g[0].token_ids for g in gens]


def part_cache(ours, args) -> None:
    print("\n== 1. UniLM greedy: cached generate vs full recompute every step ==")
    print(f"{'batch':>5} {'new':>5} {'cached s':>10} {'recompute-last s':>17} {'recompute-anchor s':>19}"
          f" {'cached tok/s':>13} {'vs last':>8} {'vs anchor':>10}")
    for new in (32, 128):
        for batch in args.batches:
            src = sources(batch, args.src_len, args.vocab, seed=batch)
            fns = {"cached": lambda s=src, n=new: cached_greedy(ours, s, n),
                   "last": lambda s=src, n=new: recompute_greedy(ours, s, n, "last"),
                   "anchor": lambda s=src, n=new: recompute_greedy(ours, s, n, "all")}
            # one warm-up pass for the cheap cached path; the recompute passes are long enough.
            cached_greedy(ours, src, 4)
            med, res = timed_alternately(fns, args.repeats, warmup=False)
            assert res["cached"] == res["last"] == res["anchor"], "cached and recomputed greedy tokens differ"
            assert all(len(r) == new for r in res["cached"])
            print(f"{batch:>5} {new:>5} {med['cached']:>10.3f} {med['last']:>17.3f} {med['anchor']:>19.3f}"
                  f" {batch * new / med['cached']:>13.0f} {med['last'] / med['cached']:>7.1f}x"
                  f" {med['anchor'] / med['cached']:>9.1f}x", flush=True)
    print("  (same tokens from all three asserted; goal: >= 5x at 128 new tokens)")


# --- 2. causal greedy vs transformers ---------------------------------------------------------

def hf_greedy(hf, src: torch.Tensor, new_tokens: int) -> list[list[int]]:
    out = hf.generate(input_ids=src, attention_mask=torch.ones_like(src), do_sample=False, num_beams=1,
                      max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=EOS,
                      pad_token_id=PAD, use_cache=True)
    return out[:, src.shape[1]:].tolist()


def part_hf(ours, hf, args) -> None:
    print("\n== 2. causal greedy: bert4ray generate vs transformers BertLMHeadModel.generate ==")
    print(f"{'batch':>5} {'new':>5} {'bert4ray s':>11} {'transformers s':>15} {'bert4ray tok/s':>15}"
          f" {'transformers tok/s':>19} {'ratio':>7}")
    for new in (32, 128):
        for batch in args.batches:
            src = sources(batch, args.src_len, args.vocab, seed=100 + batch)
            fns = {"bert4ray": lambda s=src, n=new: cached_greedy(ours, s, n, "causal"),
                   "transformers": lambda s=src, n=new: hf_greedy(hf, s, n)}
            med, res = timed_alternately(fns, args.repeats)
            assert res["bert4ray"] == res["transformers"], "bert4ray and transformers greedy tokens differ"
            tok = batch * new
            print(f"{batch:>5} {new:>5} {med['bert4ray']:>11.3f} {med['transformers']:>15.3f}"
                  f" {tok / med['bert4ray']:>15.0f} {tok / med['transformers']:>19.0f}"
                  f" {med['transformers'] / med['bert4ray']:>6.2f}x", flush=True)
    print("  (same tokens asserted; ratio = bert4ray tokens/s / transformers tokens/s; goal >= 1.0x)")


# --- 3. n samples in one call vs n calls ------------------------------------------------------

def part_samples(ours, args) -> None:
    n, new = args.samples, args.sample_tokens
    print(f"\n== 3. UniLM top-k sampling: {n} samples of one source in one call vs {n} single calls ==")
    src = sources(1, args.src_len, args.vocab, seed=7)
    seg, mask = torch.zeros_like(src), torch.ones_like(src)

    def one_call():
        cfg = DecodingConfig(strategy="sample", top_k=args.top_k, num_return_sequences=n,
                             max_new_tokens=new, min_new_tokens=new, seed=0)
        return generate(ours, src, seg, mask, cfg, eos_token_id=EOS, mask_mode="unilm")[0]

    def single_calls():
        out = []
        for i in range(n):
            cfg = DecodingConfig(strategy="sample", top_k=args.top_k, max_new_tokens=new,
                                 min_new_tokens=new, seed=i)
            out += generate(ours, src, seg, mask, cfg, eos_token_id=EOS, mask_mode="unilm")[0]
        return out

    med, res = timed_alternately({"one call": one_call, "single calls": single_calls}, args.repeats)
    for name in res:
        assert len(res[name]) == n and all(len(g.token_ids) == new for g in res[name])
    distinct = len({tuple(g.token_ids) for g in res["one call"]})
    print(f"{'mode':<26} {'seconds':>9} {'samples/s':>10} {'tokens/s':>9}")
    for name, label in (("one call", f"one call, n={n}"), ("single calls", f"{n} calls, n=1")):
        print(f"{label:<26} {med[name]:>9.3f} {n / med[name]:>10.1f} {n * new / med[name]:>9.0f}")
    print(f"ratio single calls / one call: {med['single calls'] / med['one call']:.1f}x "
          f"(goal >= 8x); {distinct}/{n} distinct samples, top_k={args.top_k}, {new} new tokens each")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("all", "cache", "hf", "samples"), default="all")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=21128)
    p.add_argument("--max-positions", type=int, default=512)
    p.add_argument("--src-len", type=int, default=32, help="source / prompt length in tokens")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--sample-tokens", type=int, default=32, help="new tokens per sample in part 3")
    p.add_argument("--top-k", type=int, default=5, help="SimBERT's gen_synonyms samples with top-k 5")
    p.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[1, 16],
                   help="batch sizes of parts 1 and 2, comma-separated")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="cpu: this process's CPU time instead of wall time; meant for --threads 1 on a "
                        "loaded machine, where it leaves out the time the process waits for a core")
    args = p.parse_args()
    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter

    ours, hf = build_models(args)
    print(f"config: {args.layers} layers, hidden {args.hidden}, {args.heads} heads, vocab {args.vocab}, "
          f"{args.max_positions} positions; source {args.src_len} tokens; torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; {args.clock} clock, median of {args.repeats}, competitors alternated; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.part in ("all", "cache"):
        part_cache(ours, args)
    if args.part in ("all", "hf"):
        part_hf(ours, hf, args)
    if args.part in ("all", "samples"):
        part_samples(ours, args)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
