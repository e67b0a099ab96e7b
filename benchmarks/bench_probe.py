"""Perturbed Masking impact matrices: bert4ray's batched computation vs the anchor's way, sentences/s.

    .venv/bin/python benchmarks/bench_probe.py
    .venv/bin/python benchmarks/bench_probe.py --model bert4ray-runs/mlm-tiny/model --per-bucket 48 12 3
    .venv/bin/python benchmarks/bench_probe.py --hidden 256 --layers 4 --per-bucket 16 4 1

Same model (a trained MLM with --model, else a randomly initialised one of the given size: speed does
not depend on the weights), same layer (--layer, default the last), same Euclidean distance, same
sentences: People's Daily text cut into character sequences of 5-10, 20-40 and 60-100 characters
(units = characters, as for segmentation). Full n x n matrices on both sides:

  anchor    LividWo/Perturbed-Masking's loop: sentence by sentence, and for each unit i one forward
            batch of its n masked copies (row j masks i and j, row i masks i alone)
  bert4ray  components.probing.impact_matrices over all sentences of the bucket at once: one copy per
            unordered pair (x\\{i,j} serves F[i][j] and F[j][i]), copies of all sentences packed into
            forward passes of --budget tokens, equal lengths unpadded

Each configuration runs once (after a short warm-up); the largest |difference| between the two
matrices is printed. Rates are given per second of this process's CPU time (the machine is shared,
and CPU time is what other jobs do not steal; with --threads 1 it equals the wall time of an idle
core) and per second of wall time. A last column gives bert4ray's adjacent-pairs mode (only what
segmentation needs, 2n - 1 copies per sentence): not the same work, shown for what `bert4ray probe`
really costs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BUCKETS = ((5, 10), (20, 40), (60, 100))


def sentences(lo: int, hi: int, n: int) -> list[str]:
    """n People's Daily character sequences of lo..hi characters: clauses (cut after ，。！？；：),
    sentences (cut after 。！？) and whole lines, in corpus order, without repeats."""
    import re

    from pipelines.corpora import peoples_daily_rows
    seen, out = set(), []
    for row in peoples_daily_rows():
        text = row["text"]
        for piece in [text, *re.findall(r"[^。！？]+[。！？]?", text), *re.findall(r"[^，。！？；：]+[，。！？；：]?", text)]:
            if lo <= len(piece) <= hi and piece not in seen:
                seen.add(piece)
                out.append(piece)
                if len(out) == n:
                    return out
    return out


def load_model(args):
    import torch

    from components.config import ModelConfig
    from components.model import Transformer
    from components.tokenizer import SPECIAL_TOKENS, Tokenizer
    if args.model:
        return Transformer.from_pretrained(args.model).eval(), Tokenizer.from_pretrained(args.model)
    import tempfile

    from pipelines.corpora import peoples_daily_rows
    chars = sorted({c for r in peoples_daily_rows() for c in r["text"] if not c.isspace()})
    vocab = os.path.join(tempfile.mkdtemp(), "vocab.txt")
    with open(vocab, "w", encoding="utf-8") as fh:
        fh.write("\n".join([*SPECIAL_TOKENS, *chars]) + "\n")
    tok = Tokenizer(vocab, max_length=128)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=args.hidden, num_hidden_layers=args.layers,
                      num_attention_heads=max(1, args.hidden // 16 if args.hidden < 256 else args.hidden // 64),
                      intermediate_size=2 * args.hidden if args.hidden < 256 else 4 * args.hidden,
                      max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return Transformer(cfg).eval(), tok


def anchor_matrix(model, tok, units, layer_index):
    """The anchor's loop for one sentence: for each i, one batch of n copies."""
    import numpy as np
    import torch

    from components.probing.impact import encode_units
    e = encode_units(tok, units)
    n = e.n
    F = np.zeros((n, n))
    base = torch.tensor(e.ids)
    with torch.inference_mode():
        for i in range(n):
            batch = base.repeat(n, 1)                                           # (n, T)
            batch[:, e.spans[i][0]:e.spans[i][1]] = tok.mask_id
            for j in range(n):
                batch[j, e.spans[j][0]:e.spans[j][1]] = tok.mask_id
            h = model(batch, return_logits=False).hidden_states[layer_index][:, e.spans[i][0]]   # (n, H)
            F[i] = torch.linalg.vector_norm(h - h[i], dim=-1).double().numpy()
    return F


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a trained MLM directory (default: random weights of --hidden/--layers)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--layer", type=int, default=-1)
    p.add_argument("--per-bucket", type=int, nargs=3, default=[64, 32, 4], metavar=("SHORT", "MID", "LONG"))
    p.add_argument("--budget", type=int, default=4096, help="bert4ray's tokens per forward pass")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    import numpy as np
    import torch

    from components.probing.impact import ImpactOptions, impact_matrices
    torch.set_num_threads(args.threads)
    model, tok = load_model(args)
    L = model.config.num_hidden_layers
    layer_index = args.layer if args.layer > 0 else L + 1 + args.layer
    full = ImpactOptions(layer=args.layer, token_budget=args.budget)
    band = ImpactOptions(layer=args.layer, token_budget=args.budget, pairs="adjacent")
    c = model.config
    print(f"model: {args.model or 'random weights'} (hidden {c.hidden_size}, {L} layers, {c.num_attention_heads} heads,"
          f" FFN {c.intermediate_size}), layer {layer_index}, Euclidean, subword first, torch threads {args.threads},"
          f" budget {args.budget} tokens")
    warm = [list(s) for s in sentences(8, 12, 4)]
    impact_matrices(model, tok, warm, full)
    for s in warm:
        anchor_matrix(model, tok, s, layer_index)

    def timed(fn):
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        return out, time.process_time() - c0, time.perf_counter() - w0

    print("| characters | sentences | anchor sent/CPU-s (wall) | bert4ray sent/CPU-s (wall) | speed-up CPU (wall) "
          "| max abs diff | bert4ray adjacent only sent/CPU-s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (lo, hi), n in zip(BUCKETS, args.per_bucket):
        texts = [list(s) for s in sentences(lo, hi, n)]
        k = len(texts)
        ref, ca, wa = timed(lambda texts=texts: [anchor_matrix(model, tok, s, layer_index) for s in texts])
        got, cb, wb = timed(lambda texts=texts: impact_matrices(model, tok, texts, full))
        _, cc, _ = timed(lambda texts=texts: impact_matrices(model, tok, texts, band))
        diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, got))
        mean_len = sum(map(len, texts)) / k
        print(f"| {lo}-{hi} (mean {mean_len:.1f}) | {k} | {k / ca:.2f} ({k / wa:.2f}) | {k / cb:.2f} ({k / wb:.2f}) | "
              f"**{ca / cb:.1f}x** ({wa / wb:.1f}x) | {diff:.1e} | {k / cc:.1f} |", flush=True)


if __name__ == "__main__":
    main()
