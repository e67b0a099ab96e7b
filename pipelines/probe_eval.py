"""Scoring `bert4ray probe` outputs against gold, with the baselines computed in the same run.

Segmentation (rows with gold words): Perturbed Masking at the recipe's threshold, under every
unsupervised choice and at the gold-optimal (oracle) threshold; baselines every character a word,
random boundaries at the method's boundary rate (mean over eval.seeds) and, with eval.pmi_corpus, the
PMI segmenter at its own Otsu threshold and its oracle. With eval.train_words: OOV and IV recall.

Dependencies (rows with gold heads): UAS and UUAS with punctuation (UPOS PUNCT) and without; the
headline is without punctuation (`*_nopunct`), the usual convention of unsupervised dependency
parsing. With eval.layers: all, every layer x decoder is scored, the layer is chosen on the first
eval.select_rows sentences and the headline comes from the others (pipelines.probe_layers).
Baselines: right-chain, left-chain, random projective trees (mean over eval.seeds).

Every report has a `table`: rows of (name, {column: value}), printed by the command and logged
to MLflow as table.txt.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np


def evaluate_outputs(recipe, scored, parsed, threshold: float | None) -> dict:
    """Scores against whatever gold the rows carry."""
    from pipelines.probe_layers import dependency_layers_report

    metrics: dict[str, float] = {}
    report: dict[str, Any] = {"gold": False, "metrics": metrics, "table": []}
    p, e = recipe.probe, recipe.eval
    if "segment" in p.tasks:
        every = e.layers == "all"
        units, scores, gold, layered = [], [], [], []
        for row in scored.select_columns(["record", "chars", "scores"] + (["layer_scores"] if every else [])).iter_rows():
            rec = json.loads(row["record"])
            if "gold_words" in rec:
                units.append(list(row["chars"]))
                scores.append(np.asarray(row["scores"], dtype=np.float64))
                gold.append(rec["gold_words"])
                if every:
                    layered.append(np.asarray(row["layer_scores"], dtype=np.float64).reshape(-1, len(scores[-1])))
        if gold:
            report["gold"] = True
            words = _train_words(e.train_words)
            report["segmentation"] = seg = segmentation_report(
                units, scores, gold, threshold, train_words=words, pmi=_pmi(recipe), seeds=e.seeds)
            if layered:
                seg["layers"] = segmentation_layers(units, layered, gold, words, seg)
            metrics.update({f"seg_{k}": v for k, v in seg["flat"].items()})
            report["table"] += seg["table"]
    if e.layers == "all" and "dependency" in p.tasks:
        dep = dependency_layers_report(recipe, parsed)
        if dep:
            report["gold"] = True
            report["dependency"] = dep
            metrics.update(dep["flat"])
            report["table"] += dep["table"]
    elif "dependency" in p.tasks or "constituency" in p.tasks:
        _score_trees(recipe, parsed, report)
    notes = sum(1 for r in parsed.select_columns(["note"]).iter_rows() if r["note"])
    if notes:
        metrics["not_parsed"] = float(notes)
    return report


def _score_trees(recipe, parsed, report: dict) -> None:
    """Heads and trees decoded by the workers (eval.layers: one) against gold, with baselines."""
    from components.probing.evaluate import bracket_f1
    metrics = report["metrics"]
    pred_heads, gold_heads, upos = [], [], []
    pred_spans, gold_spans, lengths = [], [], []
    for row in parsed.select_columns(["record", "heads", "tree"]).iter_rows():
        rec = json.loads(row["record"])
        if row["heads"] is not None and "gold_heads" in rec:
            pred_heads.append(list(row["heads"]))
            gold_heads.append(rec["gold_heads"])
            upos.append(rec.get("upos") or ["X"] * len(rec["gold_heads"]))
        if row["tree"] is not None and "gold_spans" in rec:
            pred_spans.append(bracket_spans(row["tree"]))
            gold_spans.append({tuple(s) for s in rec["gold_spans"]})
            lengths.append(len(rec["tokens"]))
    if gold_heads:
        report["gold"] = True
        dep = attachment_both(pred_heads, gold_heads, upos)
        # dep_uas / dep_uuas follow probe.ignore_punct, as before; both variants are logged too.
        suffix = "_nopunct" if recipe.probe.ignore_punct else ""
        metrics.update({"dep_uas": dep["uas" + suffix], "dep_uuas": dep["uuas" + suffix],
                        "dep_sentences": float(len(gold_heads))})
        metrics.update({f"dep_{k}": v for k, v in dep.items()})
        name = f"perturbed masking, {recipe.probe.dependency}, layer {recipe.probe.layer}"
        report["table"] += [(name, dep)] + tree_baselines(gold_heads, upos, recipe.eval.seeds)
        for bname, b in report["table"][-3:]:
            metrics.update({f"dep_{bname.split(' ')[0].replace('-', '_')}_{k}": v for k, v in b.items()})
    if gold_spans:
        report["gold"] = True
        con = bracket_f1(pred_spans, gold_spans, lengths)
        metrics.update({"con_sentence_f1": con["sentence_f1"], "con_corpus_f1": con["corpus_f1"],
                        "con_sentences": float(len(gold_spans))})


def attachment_both(pred: list[list[int]], gold: list[list[int]], upos: list[list[str]]) -> dict[str, float]:
    """UAS / UUAS over all words and without UPOS PUNCT words (`*_nopunct`)."""
    from components.probing.evaluate import attachment_scores
    every = attachment_scores(pred, gold)
    keep = [[u != "PUNCT" for u in tags] for tags in upos]
    nopunct = attachment_scores(pred, gold, keep)
    return {"uas": every["uas"], "uuas": every["uuas"], "uas_nopunct": nopunct["uas"],
            "uuas_nopunct": nopunct["uuas"]}


def tree_baselines(gold: list[list[int]], upos: list[list[str]], seeds: int) -> list[tuple[str, dict]]:
    """Right-chain, left-chain and random projective trees (mean over seeds) on the gold sentences."""
    from components.probing.baselines import left_chain, random_projective, right_chain
    rows = [("right-chain", attachment_both([right_chain(len(g)) for g in gold], gold, upos)),
            ("left-chain", attachment_both([left_chain(len(g)) for g in gold], gold, upos))]
    runs = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        runs.append(attachment_both([random_projective(len(g), rng) for g in gold], gold, upos))
    rows.append((f"random projective ({seeds} seeds)", {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}))
    return rows


def bracket_spans(brackets: str) -> set[tuple[int, int]]:
    """Constituents of an unlabeled bracketed tree as written by the parse stage (a one-word
    sentence is the bare word)."""
    from components.probing.treebank import read_bracketed
    return read_bracketed(brackets, labeled=False)[0].spans if brackets.startswith("(") else set()


# --- segmentation ----------------------------------------------------------------------------------
def _train_words(path: str | None) -> set[str] | None:
    if not path:
        return None
    from pathlib import Path

    from components.probing.sighan import read_word_list
    return read_word_list(Path(path).expanduser().read_text(encoding="utf-8"))


def _pmi(recipe):
    """The PMI baseline fitted on eval.pmi_corpus (None when unset)."""
    source = recipe.eval.pmi_corpus
    if not source:
        return None
    from pathlib import Path

    from components.probing.baselines import PMI
    if source == "peoples-daily":
        from pipelines.corpora import peoples_daily_rows
        return PMI.fit(r["text"] for r in peoples_daily_rows())
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"eval.pmi_corpus '{source}' is neither 'peoples-daily' nor a file")
    return PMI.fit(path.read_text(encoding="utf-8").splitlines())


def _seg_scores(units, scores, gold, t, train_words) -> dict:
    from components.probing.evaluate import segmentation_scores
    from components.probing.segment import segment
    return segmentation_scores([segment(u, s, t) for u, s in zip(units, scores)], gold, train_words)


def _threshold_rows(name: str, units, scores, gold, train_words, threshold: float | None) -> dict:
    """{"chosen": scores at `threshold` (Otsu when None), "oracle": at the gold-optimal threshold}."""
    from components.probing.segment import best_fixed_threshold, choose_threshold
    pooled = np.concatenate(scores)
    finite = pooled[np.isfinite(pooled)]
    t = threshold if threshold is not None else choose_threshold(finite, "otsu")
    chosen = {"threshold": t, "boundary_rate": float((finite < t).mean()),
              **_seg_scores(units, scores, gold, t, train_words)}
    t_best, _ = best_fixed_threshold(scores, gold, units)
    oracle = {"threshold": t_best, **_seg_scores(units, scores, gold, t_best, train_words)}
    return {"name": name, "chosen": chosen, "oracle": oracle}


def segmentation_report(units: list[list[str]], scores: list, gold: list[list[str]], threshold: float | None,
                        train_words: set[str] | None = None, pmi=None, seeds: int = 5) -> dict:
    """Segmentation at `threshold` and under each unsupervised choice, the oracle, and the baselines."""
    from components.probing.segment import choose_threshold, words_from_boundaries

    pooled = np.concatenate(scores)
    finite = pooled[np.isfinite(pooled)]
    out: dict[str, Any] = {"sentences": len(gold), "gaps": int(finite.size), "choices": {}}
    for method in ("otsu", "gmm"):
        for log in (False, True):
            try:
                t = choose_threshold(finite, method, log)
            except ValueError:
                continue
            out["choices"][f"{method}{'_log' if log else ''}"] = {"threshold": t, **_seg_scores(
                units, scores, gold, t, train_words)}
    flat: dict[str, float] = {}
    table: list[tuple[str, dict]] = []
    if threshold is not None:
        pm = _threshold_rows("perturbed masking", units, scores, gold, train_words, threshold)
        out["chosen"], out["oracle"] = pm["chosen"], pm["oracle"]
        rate = pm["chosen"]["boundary_rate"]
        flat.update({k: pm["chosen"][k] for k in ("precision", "recall", "f1", "boundary_rate")})
        flat.update({"oracle_threshold": pm["oracle"]["threshold"], "oracle_f1": pm["oracle"]["f1"]})
        table += [("perturbed masking (unsupervised threshold)", pm["chosen"]),
                  ("perturbed masking (oracle threshold)", pm["oracle"])]
        # Random boundaries at the same rate over the free gaps (forced ones stay).
        runs = []
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            pred = [words_from_boundaries(u, ~np.isfinite(s) | (rng.random(len(s)) < rate))
                    for u, s in zip(units, scores)]
            runs.append(_prf_dict(pred, gold, train_words))
        out["random"] = {"boundary_rate": rate, **{k: float(np.mean([r[k] for r in runs])) for k in runs[0]}}
        flat.update({f"random_{k}": out["random"][k] for k in ("f1", "precision", "recall")})
    if pmi is not None:
        # The same units and forced boundaries as the model's scores: only the scores differ.
        pmi_scores = [np.where(np.isfinite(s), pmi.scores(u), -np.inf) for u, s in zip(units, scores)]
        rows = _threshold_rows("pmi", units, pmi_scores, gold, train_words, None)
        out["pmi"], out["pmi_oracle"] = rows["chosen"], rows["oracle"]
        flat.update({"pmi_f1": rows["chosen"]["f1"], "pmi_threshold": rows["chosen"]["threshold"],
                     "pmi_oracle_f1": rows["oracle"]["f1"]})
        table += [("PMI (Otsu threshold)", rows["chosen"]), ("PMI (oracle threshold)", rows["oracle"])]
    out["single_char"] = _prf_dict([list(u) for u in units], gold, train_words)
    flat.update({f"single_char_{k}": out["single_char"][k] for k in ("f1", "precision", "recall")})
    table.append(("every character a word", out["single_char"]))
    if "random" in out:
        table.append((f"random boundaries at the same rate ({seeds} seeds)", out["random"]))
    for name, c in out["choices"].items():
        flat[f"f1_{name}"] = c["f1"]
    if train_words is not None and "chosen" in out:
        flat.update({"oov_recall": out["chosen"]["oov_recall"], "iv_recall": out["chosen"]["iv_recall"],
                     "oov_rate": out["chosen"]["oov_rate"]})
    out["flat"], out["table"] = flat, table
    return out


def segmentation_layers(units, layered: list[np.ndarray], gold, train_words, seg: dict) -> dict:
    """Every layer's segmentation at its own Otsu threshold and at its oracle: analysis rows added to
    seg's table and flat metrics (the headline stays probe.layer's, chosen before looking at gold)."""
    out = {}
    for li in range(layered[0].shape[0]):
        rows = _threshold_rows(f"layer {li + 1}", units, [x[li] for x in layered], gold, train_words, None)
        out[li + 1] = {"otsu": rows["chosen"], "oracle": rows["oracle"]}
        seg["table"] += [(f"  layer {li + 1}, Otsu threshold", {**rows["chosen"], "layer": li + 1}),
                         (f"  layer {li + 1}, oracle threshold", {**rows["oracle"], "layer": li + 1})]
        seg["flat"].update({f"layer{li + 1}_f1": rows["chosen"]["f1"], f"layer{li + 1}_oracle_f1": rows["oracle"]["f1"]})
    return out


def _prf_dict(pred, gold, train_words) -> dict:
    from components.probing.evaluate import segmentation_scores
    return segmentation_scores(pred, gold, train_words)


# --- the table -------------------------------------------------------------------------------------
COLUMNS = ("precision", "recall", "f1", "oov_recall", "iv_recall", "threshold", "uas_nopunct", "uuas_nopunct",
           "uas", "uuas", "layer")


def format_table(rows: list[tuple[str, dict]]) -> str:
    """A plain-text table of the rows' numeric columns (those any row has), values x100 except
    thresholds and layers."""
    cols = [c for c in COLUMNS if any(c in r for _, r in rows)]
    width = max([len(n) for n, _ in rows] + [6])
    lines = [f"{'':{width}s}  " + "  ".join(f"{c:>12s}" for c in cols)]
    for name, r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if v is None:
                cells.append(f"{'':>12s}")
            elif c in ("threshold", "layer"):
                cells.append(f"{v:12.4g}")
            else:
                cells.append(f"{100 * v:12.1f}")
        lines.append(f"{name:{width}s}  " + "  ".join(cells))
    return "\n".join(lines)
