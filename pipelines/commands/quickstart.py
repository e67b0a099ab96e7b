"""`bert4ray quickstart [--workdir DIR] [--serve]`: the main job on embedded defaults.

Starts a local Ray, trains a tiny SimBERT through the training engine (Ray Train, 2 workers,
DeepSpeed ZeRO-2 on CPU) on the bundled paraphrase corpus, logs the MLflow run, builds the
retrieval index of the corpus, evaluates on the held-out groups and prints paraphrases and nearest
neighbours for sample queries. Writes DIR/model/, DIR/index/ and DIR/mlflow.db.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

HELP = "train a tiny SimBERT on Ray, index its corpus, and show paraphrases and neighbours (the main job)"
SAMPLE_QUERIES = ["怎么修改银行卡密码", "明天会下雨吗", "我的快递还没到怎么办"]


def add_arguments(parser) -> None:
    parser.add_argument("--workdir", default="bert4ray-runs/quickstart", help="where everything is written")
    parser.add_argument("--serve", action="store_true", help="afterwards, serve the model on 127.0.0.1:8000")
    parser.add_argument("--port", type=int, default=8000, help="port for --serve")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value of the embedded simbert-tiny recipe")


def split_corpus(workdir: Path) -> tuple[Path, Path, Path, list[list[str]]]:
    """The bundled corpus: its last 10 % of groups are held out (see pipelines/data/README.md)."""
    source = resources.files("pipelines").joinpath("data/simbert_sample.jsonl")
    groups = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    held = max(10, len(groups) // 10)
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    paths = {"train": groups[:-held], "heldout": groups[-held:], "all": groups}
    for name, rows in paths.items():
        with open(data / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return data / "train.jsonl", data / "heldout.jsonl", data / "all.jsonl", [g["texts"] for g in groups[-held:]]


def evaluate(model_dir: Path, heldout: list[list[str]]) -> dict:
    """Retrieval top-1/top-5 among all held-out sentences; threshold accuracy on labelled pairs of
    held-out sentences (threshold chosen on the pairs of the first half of the groups, accuracy on
    the second half); BLEU of generated paraphrases of each group's first sentence against the
    group's other sentences (sacrebleu, Chinese tokenization); copy rate = share of generations
    identical to their input."""
    import numpy as np
    import sacrebleu
    import torch

    from components.simbert import SimBERT
    from pipelines.pairs import pairs_from_groups, threshold_accuracy
    from pipelines.tasks.simbert import retrieval_accuracy

    sim = SimBERT.from_pretrained(model_dir)
    texts = [t for g in heldout for t in g]
    groups = torch.tensor([i for i, g in enumerate(heldout) for _ in g])
    vectors = sim.encode(texts)
    metrics = retrieval_accuracy(torch.from_numpy(vectors), groups)
    row = {t: i for i, t in enumerate(texts)}
    half = len(heldout) // 2
    scored = []
    for part in (heldout[:half], heldout[half:]):
        pairs = pairs_from_groups(part, seed=0)
        scored.append((np.array([float(vectors[row[a]] @ vectors[row[b]]) for a, b, _ in pairs]),
                       np.array([y for _, _, y in pairs])))
    pair_metrics = threshold_accuracy(*scored[0], *scored[1])
    metrics.update(pair_threshold=pair_metrics["threshold"], pair_accuracy=pair_metrics["test_accuracy"])
    sources = [g[0] for g in heldout]
    best = sim.similar_many(sources, n=8, k=1, decoding={"strategy": "sample", "top_k": 5, "seed": 0},
                            keep_input=True)
    hyps = [cands[0][0] if cands else "" for cands in best]
    width = max(len(g) - 1 for g in heldout)
    refs = [[g[1 + r] if 1 + r < len(g) else g[1] for g in heldout] for r in range(width)]
    metrics["bleu"] = sacrebleu.corpus_bleu(hyps, refs, tokenize="zh").score
    metrics["copy_rate"] = sum(h == s for h, s in zip(hyps, sources)) / len(sources)
    return metrics


def heldout_summary(metrics: dict, groups: int) -> str:
    """The line the quickstart prints, and its model card states, for the held-out figures."""
    return (f"held-out groups: {groups}  retrieval top-1 {metrics['top1']:.3f} "
            f"(chance {metrics['top1_chance']:.3f}), top-5 {metrics['top5']:.3f}; pair accuracy "
            f"{metrics['pair_accuracy']:.3f} at cosine >= {metrics['pair_threshold']:.2f}; "
            f"paraphrase BLEU {metrics['bleu']:.1f}, copies {metrics['copy_rate']:.0%}")


def run(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from pipelines.indexing import build_index
    from pipelines.recipe import load_recipe
    from pipelines.train import run_training

    console = Console()
    t0 = time.perf_counter()
    workdir = Path(args.workdir).resolve()
    train, heldout_path, all_path, heldout = split_corpus(workdir)
    recipe_path = resources.files("pipelines").joinpath("recipes/simbert-tiny.yaml")
    data = {"workdir": str(workdir), "name": "quickstart",
            "data": {"train": [str(train)], "validation": [str(heldout_path)]}}
    if args.steps:
        data["schedule"] = {"max_steps": args.steps}
    recipe = load_recipe(str(recipe_path), args.overrides, data=data)
    console.rule("[bold]1/3 training a tiny SimBERT on Ray Train + DeepSpeed")
    result = run_training(recipe, output=workdir / "model")
    console.print(f"model: {result.model_dir}  ({result.data_report.summary()})")

    console.rule("[bold]2/3 indexing the corpus with Ray Data + FAISS")
    index = build_index(result.model_dir, all_path, workdir / "index")
    console.print(f"index: {workdir / 'index'}  ({len(index)} sentences, {index.resolved_kind})")

    console.rule("[bold]3/3 held-out evaluation and samples")
    metrics = evaluate(result.model_dir, heldout)
    figures = heldout_summary(metrics, len(heldout))
    console.print(figures)
    from pipelines.model_card import add_card_section
    add_card_section(result.model_dir, "Held-out evaluation (bert4ray quickstart)",
                     f"Measured by `bert4ray quickstart` after training, on the {len(heldout)} paraphrase groups "
                     "held out of the bundled corpus: retrieval top-1 / top-5 of each sentence among all "
                     "held-out sentences, pair accuracy at a cosine threshold chosen on half of the groups, "
                     "and BLEU of generated paraphrases against each group's other sentences. It printed:"
                     f"\n\n    {figures}")
    from components.simbert import SimBERT
    sim = SimBERT.from_pretrained(result.model_dir)
    queries = SAMPLE_QUERIES + [g[0] for g in heldout[:3]]
    paraphrases = sim.similar_many(queries, n=32, k=5, decoding={"strategy": "sample", "top_k": 5, "seed": 0})
    neighbours = index.search(sim.encode(queries), 6)
    for query, cands, hits in zip(queries, paraphrases, neighbours):
        table = Table(title=f"「{query}」", show_lines=False, title_justify="left")
        table.add_column("generated paraphrases", style="green")
        table.add_column("cos", justify="right")
        table.add_column("nearest neighbours in the corpus", style="cyan")
        table.add_column("cos", justify="right")
        hits = [h for h in hits if h.text != query][:5]
        for i in range(max(len(cands), len(hits))):
            c = cands[i] if i < len(cands) else ("", None)
            h = hits[i] if i < len(hits) else None
            table.add_row(c[0], f"{c[1]:.3f}" if c[1] is not None else "", h.text if h else "",
                          f"{h.score:.3f}" if h else "")
        console.print(table)
    db = workdir / "mlflow.db"
    console.rule(f"[bold]done in {time.perf_counter() - t0:.0f} s")
    # soft_wrap: commands stay on one line, whatever the terminal's width, so they paste as they are
    console.print(f"MLflow run {result.mlflow_run_id}:  mlflow ui --backend-store-uri sqlite:///{db}  "
                  "(then open http://127.0.0.1:5000)", soft_wrap=True)
    console.print(f"Serve it:  bert4ray serve --model {result.model_dir} --index {workdir / 'index'}",
                  soft_wrap=True)
    (workdir / "quickstart.json").write_text(json.dumps(
        {"metrics": metrics, "train_metrics": result.metrics, "mlflow_run_id": result.mlflow_run_id,
         "seconds": time.perf_counter() - t0}, indent=2), encoding="utf-8")
    if args.serve:
        from types import SimpleNamespace

        import ray
        ray.shutdown()                       # the server starts its own Ray; free this one first

        from pipelines.commands.serve import run_foreground, serving_command
        ns = SimpleNamespace(config=None, model=str(result.model_dir), index=str(workdir / "index"),
                             chat_model=None, attribution_model=None, host="127.0.0.1", port=args.port, address=None)
        return run_foreground(serving_command(ns))
    return 0
