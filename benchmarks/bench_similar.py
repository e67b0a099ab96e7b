"""SimBERT `similar()` end to end (generate n candidates, drop duplicates and the input, rerank by
cosine): n = 32 candidates in one call vs 32 sequential calls vs the anchors' no-cache decoding.

    .venv/bin/python benchmarks/bench_similar.py                          # random-weight model
    .venv/bin/python benchmarks/bench_similar.py --model bert4ray-runs/quickstart/model

1. bert4ray: `SimBERT.similar(text, n=32, k)`: the source is encoded once, the cache expanded to
   32 rows, top-k sampling, one encode of the candidates for the rerank.
2. sequential: 32 calls that each generate one candidate with the cached decoder, then the same
   rerank (what a service that loops over a one-sample API does).
3. anchor: SimBERT's `gen_synonyms` way (bert4keras `AutoRegressiveDecoder.random_sample`): the
   32 rows are batched, but every step runs the model over source + everything generated so far
   and takes the last position's LM logits; then the same rerank.

Candidates have a forced length (`--new-tokens`, EOS suppressed until then) so all three do the
same number of decoding steps. With `--model`, a trained SimBERT and its vocabulary are used;
otherwise a randomly initialised 4-layer, 256-wide model over a 21,128-token vocabulary.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import write_cjk_vocab  # noqa: E402
from components.config import ModelConfig  # noqa: E402
from components.decoding.filters import filter_logits  # noqa: E402
from components.model import Transformer  # noqa: E402
from components.simbert import SimBERT  # noqa: E402
from components.tokenizer import Tokenizer  # noqa: E402


def random_simbert(tmp: str, layers: int, hidden: int) -> SimBERT:
    vocab = write_cjk_vocab(tmp)
    torch.manual_seed(0)
    tok = Tokenizer(vocab)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=4, intermediate_size=4 * hidden, max_position_embeddings=512,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pooler_activation="linear")
    return SimBERT(Transformer(cfg).eval(), tok, max_length=128)


def rerank(sim: SimBERT, text: str, candidates: list[str], k: int) -> list[tuple[str, float]]:
    pool = list(dict.fromkeys(c for c in candidates if c.strip() and c != text))
    v = sim.encode([text, *pool])
    scores = v[1:] @ v[0]
    order = np.argsort(-scores, kind="stable")[:k]
    return [(pool[j], float(scores[j])) for j in order]


@torch.no_grad()
def anchor_candidates(sim: SimBERT, text: str, n: int, new_tokens: int, top_k: int, seed: int) -> list[str]:
    """Batched top-k sampling that recomputes the whole sequence every step (no cache)."""
    tok, model = sim.tokenizer, sim.model
    g = torch.Generator().manual_seed(seed)
    src = tok.encode_batch([text], max_length=sim.max_length)
    ids = src.input_ids.repeat(n, 1)
    seg = torch.zeros_like(ids)
    start = ids.shape[1]
    for _ in range(new_tokens):
        logits = model(ids, seg, mask_mode="unilm").logits[:, -1].float()     # LM head over every position
        logits[:, tok.sep_id] = float("-inf")                                  # forced length
        probs = torch.softmax(filter_logits(logits, top_k, None), dim=-1)
        nxt = torch.multinomial(probs, 1, generator=g)
        ids = torch.cat([ids, nxt], dim=1)
        seg = torch.cat([seg, torch.ones_like(nxt)], dim=1)
    return [tok.decode(row[start:].tolist()) for row in ids]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a trained SimBERT model directory (default: random weights)")
    p.add_argument("--text", default="怎么修改银行卡密码")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        sim = SimBERT.from_pretrained(args.model, max_length=128) if args.model else \
            random_simbert(tmp, args.layers, args.hidden)
        n, new = args.n, args.new_tokens
        decoding = {"strategy": "sample", "top_k": args.top_k, "min_new_tokens": new, "max_new_tokens": new}

        def one_call():
            return sim.similar(args.text, n=n, k=args.k, decoding={**decoding, "seed": 0})

        def sequential():
            cands = [sim.generate([args.text], 1, {**decoding, "seed": i})[0][0] for i in range(n)]
            return rerank(sim, args.text, cands, args.k)

        def anchor():
            return rerank(sim, args.text, anchor_candidates(sim, args.text, n, new, args.top_k, 0), args.k)

        fns = {"bert4ray similar(n=32)": one_call, "32 sequential calls": sequential, "anchor (no cache)": anchor}
        times = {name: [] for name in fns}
        for fn in fns.values():                                        # warm-up
            fn()
        for _ in range(args.repeats):                                  # alternate, so load hits all alike
            for name, fn in fns.items():
                t0 = time.perf_counter()
                out = fn()
                times[name].append(time.perf_counter() - t0)
                assert 1 <= len(out) <= args.k and args.text not in [t for t, _ in out]
        med = {name: statistics.median(t) for name, t in times.items()}
    base = med["bert4ray similar(n=32)"]
    print(f"similar(): n={n} candidates of {new} tokens, top-k {args.top_k}, rerank to k={args.k}; "
          f"{'model ' + args.model if args.model else f'random {args.layers}x{args.hidden} model'}; "
          f"median of {args.repeats}\n")
    print("| method | seconds | candidates/s | vs bert4ray |\n| --- | ---: | ---: | ---: |")
    for name, t in med.items():
        print(f"| {name} | {t:.3f} | {n / t:.1f} | {t / base:.1f}x slower |" if name != "bert4ray similar(n=32)"
              else f"| {name} | {t:.3f} | {n / t:.1f} | 1.0x |")
    print(f"\none call vs sequential: {med['32 sequential calls'] / base:.1f}x (goal >= 8x); "
          f"vs the anchors' no-cache decoding: {med['anchor (no cache)'] / base:.1f}x")


if __name__ == "__main__":
    main()
