"""Dependency scores of every layer (`eval.layers: all` in a probe recipe).

The parse stage writes each sentence's impact matrices of all L layers; here every layer x decoder
is decoded and scored. The layer is chosen, per decoder, by UAS without punctuation on the first
`eval.select_rows` sentences in file order (the selection slice), and the headline is that layer's
score on the remaining sentences (the test slice), so no headline figure picks its own layer. The
chain and random-tree baselines are scored on the same test slice.
"""

from __future__ import annotations

import json
import re

import numpy as np

_ROW_NUMBER = re.compile(r"#(\d+)$")


def _order_key(rid: str):
    m = _ROW_NUMBER.search(rid)
    return (rid[:m.start()], int(m.group(1))) if m else (rid, 0)


def collect(parsed) -> list[dict]:
    """Rows with gold heads and matrices, in file order: {"id", "gold", "upos", "F": (L, n, n)}."""
    rows = []
    for row in parsed.select_columns(["id", "record", "matrix"]).iter_rows():
        rec = json.loads(row["record"])
        if "gold_heads" not in rec or row["matrix"] is None:
            continue
        n = len(rec["gold_heads"])
        F = np.asarray(row["matrix"], dtype=np.float64)
        rows.append({"id": row["id"], "gold": rec["gold_heads"], "upos": rec.get("upos") or ["X"] * n,
                     "F": F.reshape(-1, n, n)})
    rows.sort(key=lambda r: _order_key(r["id"]))
    return rows


def decode_all(rows: list[dict], decoders: list[str], root: str) -> dict[tuple[str, int], list[list[int]]]:
    """(decoder, layer 1..L) -> heads of every row."""
    from components.probing.dependency import parse_dependencies
    L = rows[0]["F"].shape[0]
    out = {}
    for d in decoders:
        for layer in range(1, L + 1):
            out[(d, layer)] = [parse_dependencies(r["F"][layer - 1], d, _root(r, root)) for r in rows]
    return out


def _root(row: dict, root: str):
    return row["gold"].index(0) + 1 if root == "gold" else "impact"


def dependency_layers_report(recipe, parsed) -> dict:
    """The recipe's root choice (probe.root) gives the headline; with eval.gold_root_too the same
    matrices are also decoded with the gold root (the paper's setting), as `gold_root_*` rows."""
    from pipelines.probe_eval import tree_baselines

    rows = collect(parsed)
    if not rows:
        return {}
    e = recipe.eval
    k = min(e.select_rows, len(rows) - 1)
    test = rows[k:]
    gold_t, upos_t = [r["gold"] for r in test], [r["upos"] for r in test]
    report = _layers(rows, k, e.decoders, recipe.probe.root, "")
    if e.gold_root_too and recipe.probe.root != "gold":
        extra = _layers(rows, k, e.decoders, "gold", "gold_root_")
        report["flat"].update(extra["flat"])
        report["layers"].update(extra["layers"])
        report["table"] += extra["table"]
        report["layer_rows"] += extra["layer_rows"]
    for name, b in tree_baselines(gold_t, upos_t, e.seeds):
        report["table"].append((name, b))
        key = name.split(" ")[0].replace("-", "_")
        report["flat"].update({f"dep_{key}_{m}": v for m, v in b.items()})
    report["flat"].update({"dep_select_sentences": float(k), "dep_test_sentences": float(len(test))})
    return {"select_sentences": k, "test_sentences": len(test), "layers": report["layers"],
            "flat": report["flat"], "table": report["table"] + report["layer_rows"]}


def _layers(rows: list[dict], k: int, decoders: list[str], root: str, prefix: str) -> dict:
    """Per decoder: every layer scored on the selection and test slices, the chosen layer's test score."""
    from pipelines.probe_eval import attachment_both
    sel, test = rows[:k], rows[k:]
    heads = decode_all(rows, decoders, root)
    L = rows[0]["F"].shape[0]
    gold_t, upos_t = [r["gold"] for r in test], [r["upos"] for r in test]
    per_layer, flat, table = {}, {}, []
    label = "gold root, " if root == "gold" else ""
    for d in decoders:
        for layer in range(1, L + 1):
            h = heads[(d, layer)]
            per_layer[f"{prefix}{d}_layer{layer}"] = {
                "select": attachment_both(h[:k], [r["gold"] for r in sel], [r["upos"] for r in sel]) if k else {},
                "test": attachment_both(h[k:], gold_t, upos_t)}
        # The layer with the best selection-slice UAS (all sentences when there is no selection slice).
        part = "select" if k else "test"
        best = max(range(1, L + 1), key=lambda li: per_layer[f"{prefix}{d}_layer{li}"][part]["uas_nopunct"])
        head = per_layer[f"{prefix}{d}_layer{best}"]["test"]
        table.append((f"perturbed masking, {label}{d}, layer {best} (chosen on the first {k})",
                      {**head, "layer": best}))
        flat.update({f"dep_{prefix}{d}_layer": float(best), **{f"dep_{prefix}{d}_{m}": v for m, v in head.items()}})
        for layer in range(1, L + 1):
            flat.update({f"dep_{prefix}{d}_layer{layer}_{m}": v
                         for m, v in per_layer[f"{prefix}{d}_layer{layer}"]["test"].items()})
    layer_rows = [(f"  {label}{d}, layer {layer} (every layer, test slice)",
                   {**per_layer[f"{prefix}{d}_layer{layer}"]["test"], "layer": layer})
                  for d in decoders for layer in range(1, L + 1)]
    return {"layers": per_layer, "flat": flat, "table": table, "layer_rows": layer_rows}
