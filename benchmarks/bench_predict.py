"""`bert4ray predict` throughput: embed and classify with 2 Ray Data actors vs a single-process loop
over the same model and batch size, and vs one model call per row, on the same input, in one run.

    .venv/bin/python benchmarks/bench_predict.py                     # 3 rounds, 45,020 rows, 2 actors
    .venv/bin/python benchmarks/bench_predict.py --rounds 5 --repeat 40 --actors 2 --batch-size 64

Model: randomly initialised at the quickstart recipe's size (the model section of
pipelines/recipes/simbert-tiny.yaml: hidden 128, 4 layers, 4 heads, FFN 512, 64 positions, a
vocabulary of the corpus' characters); speed does not depend on the weights. classify is the same
encoder with a 2-class head. Input: the bundled paraphrase corpus (pipelines/data/simbert_sample.jsonl,
2,251 sentences of 4-20 characters) repeated --repeat times, one JSON Lines file {"text"}.

Arms, interleaved within each round (kinds in turn):
  loop     one process, torch's default threads, rows sorted by length over the whole input,
           passes of --batch-size rows (embed: SimBERT.encode; classify: the same loop with the
           classifier's softmax): the peer a user would write;
  loop, 1 thread  the same loop with torch on one thread: one core's rate, what each actor runs
           (on a busy machine, torch's default threads spin against other processes and the
           default-threads loop slows down far more than this one);
  per row  the same model called once per row (on the first --per-row rows);
  predict  the job `bert4ray predict` runs (pipelines.predict.run_predict) with --actors actors in a
           local Ray started once for the whole run (Ray's own start-up is not counted). End to end:
           rows / wall time of the job, its actors' start and the Parquet writing included.
           Steady: rows after the first block came back / the time after it, i.e. once the actors run.
           Actors busy: their time inside calls / (actors x the job's wall time).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from components.config import ModelConfig  # noqa: E402
from components.model import Transformer  # noqa: E402
from components.simbert import SimBERT  # noqa: E402
from components.tokenizer import SPECIAL_TOKENS, Tokenizer  # noqa: E402
from pipelines.recipe import load_recipe  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def corpus_texts() -> list[str]:
    with open(os.path.join(REPO, "pipelines/data/simbert_sample.jsonl"), encoding="utf-8") as fh:
        return [t for line in fh for t in json.loads(line)["texts"]]


def model_dirs(tmp: str, texts: list[str]) -> dict[str, str]:
    """The quickstart recipe's model shape, randomly initialised, as a SimBERT and a classifier."""
    m = load_recipe(os.path.join(REPO, "pipelines/recipes/simbert-tiny.yaml")).model
    chars = [c for c, _ in collections.Counter("".join(texts).lower()).most_common(m.vocab_max_size)]
    vocab = os.path.join(tmp, "vocab.txt")
    with open(vocab, "w", encoding="utf-8") as fh:
        fh.write("\n".join([*SPECIAL_TOKENS, *chars]) + "\n")
    out = {}
    for kind, extra in (("embed", {}), ("classify", {"num_labels": 2, "labels": ["neg", "pos"]})):
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=len(SPECIAL_TOKENS) + len(chars), hidden_size=m.hidden_size,
                          num_hidden_layers=m.num_hidden_layers, num_attention_heads=m.num_attention_heads,
                          intermediate_size=m.intermediate_size, max_position_embeddings=m.max_position_embeddings,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pooler_activation="linear", **extra)
        out[kind] = os.path.join(tmp, kind)
        Transformer(cfg).eval().save_pretrained(out[kind], metadata={"vocab_file": vocab, "task": kind})
    return out


class Peers:
    """The single-process arms, on one model loaded once per kind."""

    def __init__(self, kind: str, model_dir: str, batch_size: int):
        self.kind, self.batch_size = kind, batch_size
        self.model, self.tok = Transformer.from_pretrained(model_dir).eval(), Tokenizer.from_pretrained(model_dir)
        self.sim = SimBERT(self.model, self.tok, max_length=self.model.config.max_position_embeddings)

    @torch.no_grad()
    def loop(self, texts: list[str]) -> None:
        if self.kind == "embed":
            self.sim.encode(texts, batch_size=self.batch_size)
            return
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            b = self.tok.encode_batch([texts[i] for i in order[start:start + self.batch_size]])
            self.model(b.input_ids, b.segment_ids, b.attention_mask, return_logits=False).class_logits.softmax(-1)

    @torch.no_grad()
    def per_row(self, texts: list[str]) -> None:
        for t in texts:
            if self.kind == "embed":
                self.sim.encode([t])
            else:
                b = self.tok.encode_batch([t])
                self.model(b.input_ids, b.segment_ids, b.attention_mask, return_logits=False).class_logits.softmax(-1)


def one_thread(fn, *args) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fn(*args)
    finally:
        torch.set_num_threads(threads)


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def predict_arm(kind: str, model_dir: str, src: str, tmp: str, args) -> dict:
    from pipelines.predict import PredictJob, run_predict
    out = os.path.join(tmp, f"out-{kind}")
    shutil.rmtree(out, ignore_errors=True)
    job = PredictJob(kind, model_dir, src, out, batch_size=args.batch_size, block_rows=args.block_rows,
                     num_actors=args.actors)
    return run_predict(job, progress=False).metrics


def span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:,.0f}" if round(lo) == round(hi) else f"{lo:,.0f}–{hi:,.0f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeat", type=int, default=20, help="copies of the 2,251-sentence corpus in the input")
    p.add_argument("--per-row", type=int, default=1000, help="rows timed one call each")
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--block-rows", type=int, default=1024)
    p.add_argument("--kinds", default="embed,classify")
    args = p.parse_args()

    from pipelines.train import init_ray
    tmp = tempfile.mkdtemp(prefix="bench-predict-")
    texts = corpus_texts() * args.repeat
    src = os.path.join(tmp, "input.jsonl")
    with open(src, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
    dirs = model_dirs(tmp, texts)
    kinds = args.kinds.split(",")
    peers = {k: Peers(k, dirs[k], args.batch_size) for k in kinds}
    load0 = os.getloadavg()
    init_ray()
    import ray
    print(f"{len(texts):,} rows, batch {args.batch_size}, {args.actors} actors, torch threads in the loop "
          f"{torch.get_num_threads()}, Ray CPUs {ray.cluster_resources().get('CPU'):g}, load average "
          f"{load0[0]:.1f} at the start", flush=True)
    res: dict = {k: collections.defaultdict(list) for k in kinds}
    for r in range(args.rounds):
        for kind in kinds:
            res[kind]["loop"].append(len(texts) / timed(peers[kind].loop, texts))
            res[kind]["loop, 1 thread"].append(len(texts) / timed(one_thread, peers[kind].loop, texts))
            rows = texts[:args.per_row]
            res[kind]["per row"].append(len(rows) / timed(peers[kind].per_row, rows))
            m = predict_arm(kind, dirs[kind], src, tmp, args)
            res[kind]["predict"].append(m["rows_per_s"])
            res[kind]["steady"].append(m["steady_rows_per_s"])
            res[kind]["startup"].append(m["startup_seconds"])
            res[kind]["busy"].append(m["actor_seconds"] / (args.actors * m["seconds"]))
            print(f"round {r + 1} {kind}: loop {res[kind]['loop'][-1]:,.0f} rows/s ("
                  f"{res[kind]['loop, 1 thread'][-1]:,.0f} on 1 thread), per row "
                  f"{res[kind]['per row'][-1]:,.0f}, predict {m['rows_per_s']:,.0f} end to end / "
                  f"{m['steady_rows_per_s']:,.0f} steady, start-up {m['startup_seconds']:.1f} s, actors busy "
                  f"{res[kind]['busy'][-1]:.0%}, load {os.getloadavg()[0]:.1f}", flush=True)
    report(res, args)
    shutil.rmtree(tmp, ignore_errors=True)


def report(res: dict, args) -> None:
    print(f"\nrows/s, range over {args.rounds} rounds (load average at the end {os.getloadavg()[0]:.1f})\n")
    print("| kind | loop (1 process) | loop, 1 thread | per row | predict, end to end | predict, steady | "
          "steady / loop | end to end / loop | actors' start-up s | actors busy |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind, r in res.items():
        steady = [s / lp for s, lp in zip(r["steady"], r["loop"])]
        e2e = [s / lp for s, lp in zip(r["predict"], r["loop"])]
        print(f"| {kind} | {span(r['loop'])} | {span(r['loop, 1 thread'])} | {span(r['per row'])} | "
              f"{span(r['predict'])} | {span(r['steady'])} | "
              f"{min(steady):.2f}–{max(steady):.2f}× | {min(e2e):.2f}–{max(e2e):.2f}× | "
              f"{min(r['startup']):.1f}–{max(r['startup']):.1f} | {min(r['busy']):.0%}–{max(r['busy']):.0%} |")


if __name__ == "__main__":
    main()
