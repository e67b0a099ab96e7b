"""`bert4ray probe`: Perturbed Masking over a corpus with Ray Data.

    corpus (JSON Lines / Parquet rows {"text", "words"?, "tokens"?}, CoNLL-U, bracketed trees,
            or the bundled People's Daily)
      -> Ray Data: read_binary_files -> flat_map(parse) -> filter(split by text hash)
      -> map_batches(ProbeWorker actors, stage "chars"): boundary scores between characters,
         all masked copies of a batch of texts packed into shared forward passes
      -> driver: the threshold from the corpus' own score distribution (Otsu / Gaussian mixture)
      -> map_batches(ProbeWorker, stage "parse"): words, word-level impact matrices, heads, trees
      -> Parquet (id, text, words, tokens, heads, tree, note); with gold data, the scores to MLflow

The recipe is its own small set of dataclasses (pipelines.probe_recipe), loaded, checked and
overridden (`--set a.b=c`) by the same machinery as every job's recipe (`pipelines.sections`).

    from pipelines.probe import load_probe_recipe, run_probe
    result = run_probe(load_probe_recipe("pipelines/recipes/probe-tiny.yaml", ["probe.layer=1"]))
    result.output_dir, result.metrics
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.probe_eval import bracket_spans, evaluate_outputs, format_table, segmentation_report  # noqa: F401
from pipelines.probe_recipe import ProbeRecipe, ProbeSection, load_probe_recipe  # noqa: F401 (public here too)
from pipelines.sections import to_yaml

TREE_FILE_SUFFIXES = (".mrg", ".tree", ".trees", ".ptb")
CONLLU_SUFFIXES = (".conllu", ".conll")
SIGHAN_SUFFIXES = (".utf8",)


# --- reading ---------------------------------------------------------------------------------------
def parse_corpus_file(path: str, data: bytes, trees_labeled: bool = True,
                      gold: dict[int, list[str]] | None = None) -> list[dict]:
    """One file's bytes -> rows {"id", "record": JSON of {"text", "gold_words"?, "tokens"?,
    "gold_heads"?, "gold_spans"?, "upos"?}}. Malformed gold files raise (they are the yardstick).
    A SIGHAN raw file (.utf8) gives one row per non-blank line, with gold[line] as its gold words."""
    from components.probing.sighan import read_raw
    from components.probing.treebank import read_bracketed, read_conllu
    from pipelines.data import parse_file

    name = Path(path).name
    rows = []
    if path.endswith(SIGHAN_SUFFIXES):
        for k, text in read_raw(data.decode("utf-8")):
            rec = {"text": text} if gold is None else {"text": text, "gold_words": gold[k]}
            rows.append({"id": f"{name}#{k}", "record": json.dumps(rec, ensure_ascii=False)})
        return rows
    if path.endswith(CONLLU_SUFFIXES):
        for k, s in enumerate(read_conllu(data.decode("utf-8"), source=name), 1):
            rec = {"text": " ".join(s.words), "tokens": s.words, "gold_heads": s.heads, "upos": s.upos}
            rows.append({"id": f"{name}#{k}", "record": json.dumps(rec, ensure_ascii=False)})
        return rows
    if path.endswith(TREE_FILE_SUFFIXES):
        for k, t in enumerate(read_bracketed(data.decode("utf-8"), labeled=trees_labeled, source=name), 1):
            rec = {"text": " ".join(t.words), "tokens": t.words, "gold_spans": sorted(t.spans)}
            rows.append({"id": f"{name}#{k}", "record": json.dumps(rec, ensure_ascii=False)})
        return rows
    for r in parse_file(path, data):
        if r["error"]:
            raise ValueError(f"{r['source']}: {r['error']}")
        rec = json.loads(r["record"])
        out: dict[str, Any] = {}
        words, tokens, text = rec.get("words"), rec.get("tokens"), rec.get("text")
        for key, value in (("words", words), ("tokens", tokens)):
            if value is not None and not (isinstance(value, list) and value
                                          and all(isinstance(w, str) and w for w in value)):
                raise ValueError(f"{r['source']}: field '{key}' must be a non-empty list of non-empty strings")
        if text is None:
            if words is None and tokens is None:
                raise ValueError(f"{r['source']}: row has no 'text' (or 'words' / 'tokens')")
            text = "".join(words) if words is not None else " ".join(tokens)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{r['source']}: field 'text' must be a non-empty string")
        out["text"] = text
        if words is not None:
            if "".join(words) != "".join(text.split()):
                raise ValueError(f"{r['source']}: the gold words do not spell the text")
            out["gold_words"] = words
        if tokens is not None:
            out["tokens"] = tokens
        rid = rec.get("id", r["source"].rsplit("/", 1)[-1])
        rows.append({"id": str(rid), "record": json.dumps(out, ensure_ascii=False)})
    return rows


def _files(recipe: ProbeRecipe, workdir: Path) -> list[str]:
    from pipelines.data import JSONL_SUFFIXES, PARQUET_SUFFIXES, check_files
    if recipe.data.source == "peoples-daily":
        from pipelines.corpora import corpus_file
        return [str(corpus_file("peoples-daily", workdir / "corpora"))]
    known = JSONL_SUFFIXES + PARQUET_SUFFIXES + CONLLU_SUFFIXES + TREE_FILE_SUFFIXES + SIGHAN_SUFFIXES
    return check_files(recipe.data.files, known)


def read_probe_rows(recipe: ProbeRecipe, files: list[str]):
    """The corpus as a Ray Dataset of {"id", "record"}, split and limited as the recipe says."""
    from pipelines.data import read_binary, split_key

    labeled = recipe.data.trees_labeled
    gold = read_sighan_gold(recipe, files)

    def parse(row: dict) -> list[dict]:
        return parse_corpus_file(row["path"], row["bytes"], labeled, gold)

    ds = read_binary(files).flat_map(parse)
    d = recipe.data
    if d.split != "all":
        want = d.split == "validation"

        def keep(row) -> bool:
            held_out = split_key(json.loads(row["record"])["text"], d.split_seed) < d.validation_fraction
            return held_out == want
        ds = ds.filter(keep)
    if d.max_rows:
        ds = ds.limit(d.max_rows)
    return ds


def read_sighan_gold(recipe: ProbeRecipe, files: list[str]) -> dict[int, list[str]] | None:
    """eval.gold's words by line number, checked against the raw file line by line (on the driver,
    so a mismatch stops the run before any model work)."""
    if not recipe.eval.gold:
        return None
    from components.probing.sighan import align_raw_gold, read_gold, read_raw
    from pipelines.data import read_location
    gold_text = read_location(recipe.eval.gold, "eval.gold").decode("utf-8")
    if not files[0].endswith(SIGHAN_SUFFIXES):
        raise ValueError(f"eval.gold scores a SIGHAN raw file ({', '.join(SIGHAN_SUFFIXES)}), got '{files[0]}'")
    raw = read_raw(read_location(files[0]).decode("utf-8"))
    gold = read_gold(gold_text)
    return {k: words for k, _, words in align_raw_gold(raw, gold, source=str(recipe.eval.gold).rsplit("/", 1)[-1])}


# --- the actor -------------------------------------------------------------------------------------
def _schema(stage: str, matrices: bool):
    import pyarrow as pa
    fields = [("id", pa.string()), ("record", pa.string())]
    if stage == "chars":
        fields += [("chars", pa.list_(pa.string())), ("scores", pa.list_(pa.float64()))]
        if matrices:
            fields.append(("layer_scores", pa.list_(pa.float64())))
    else:
        fields += [("text", pa.string()), ("words", pa.list_(pa.string())), ("tokens", pa.list_(pa.string())),
                   ("heads", pa.list_(pa.int32())), ("tree", pa.string()), ("note", pa.string())]
        if matrices:
            fields.append(("matrix", pa.list_(pa.float64())))
    return pa.schema(fields)


class ProbeWorker:
    """Ray Data actor: loads the model once; `chars` stage scores character boundaries, `parse`
    stage segments with the chosen threshold and parses."""

    def __init__(self, model_dir: str, probe: dict, stage: str, threshold: float | None = None,
                 threads: int = 1, matrices: bool = False, all_layers: bool = False):
        import torch

        from components.probing.prober import Prober
        torch.set_num_threads(threads)
        self.p = ProbeSection(**probe)
        self.stage, self.threshold, self.matrices = stage, threshold, matrices or all_layers
        self.all_layers = all_layers
        self.prober = Prober.from_pretrained(model_dir, layer=self.p.layer, distance=self.p.distance,
                                             subword=self.p.subword, token_budget=self.p.token_budget)

    def __call__(self, batch):
        import pyarrow as pa
        ids = batch["id"].to_pylist()
        records = batch["record"].to_pylist()
        recs = [json.loads(r) for r in records]
        if self.stage == "chars":
            return self._chars(ids, records, recs)
        return pa.Table.from_pylist(self._parse(ids, records, recs, batch), schema=_schema("parse", self.matrices))

    def _chars(self, ids, records, recs):
        """Boundary scores at probe.layer; with every layer (eval.layers: all) also all of them,
        flattened (L x gaps), from the same forward passes."""
        import pyarrow as pa
        scored = self.prober.char_scores([r["text"] for r in recs], all_layers=self.all_layers)
        cols = {"id": ids, "record": records, "chars": [c for c, _ in scored]}
        if not self.all_layers:
            cols["scores"] = [s.tolist() for _, s in scored]
            return pa.table(cols, schema=_schema("chars", False))
        L = self.prober.model.config.num_hidden_layers
        li = self.p.layer - 1 if self.p.layer > 0 else L + self.p.layer
        cols["scores"] = [s[li].tolist() for _, s in scored]
        cols["layer_scores"] = [s.ravel().tolist() for _, s in scored]
        return pa.table(cols, schema=_schema("chars", True))

    def _parse(self, ids, records, recs, batch) -> list[dict]:
        from components.probing.constituency import to_brackets
        from components.probing.segment import segment
        p = self.p
        out = []
        segmenting = "segment" in p.tasks
        chars = batch["chars"].to_pylist() if segmenting else None
        scores = batch["scores"].to_pylist() if segmenting else None
        for k, (rid, raw, rec) in enumerate(zip(ids, records, recs)):
            words = segment(chars[k], scores[k], self.threshold) if segmenting else None
            out.append({"id": rid, "record": raw, "text": rec["text"], "words": words, "tokens": None,
                        "heads": None, "tree": None, "note": None})
        dep = p.dependency if "dependency" in p.tasks else None
        con = p.constituency if "constituency" in p.tasks else None
        if dep is None and con is None:
            return out
        todo, units, roots = [], [], []
        for k, rec in enumerate(recs):
            toks = rec.get("tokens") or out[k]["words"] or rec["text"].split()
            out[k]["tokens"] = toks
            if not self.prober.fits(toks):
                out[k]["note"] = f"not parsed: longer than the model's {self.prober.max_tokens} tokens"
                continue
            root = None
            if dep and p.root == "gold":
                if "gold_heads" not in rec:
                    raise ValueError(f"row {ids[k]}: probe.root is 'gold' but the row has no gold heads")
                root = rec["gold_heads"].index(0) + 1
            todo.append(k)
            units.append(toks)
            roots.append(root)
        if self.all_layers and dep:
            # Every layer's matrix from one set of forward passes; the driver decodes and scores them.
            from components.probing.impact import impact_matrices
            opts = dataclasses.replace(self.prober.options, layer="all", pairs="all")
            for k, F in zip(todo, impact_matrices(self.prober.model, self.prober.tokenizer, units, opts)):
                out[k]["matrix"] = F.ravel().tolist()
            return out
        for k, parsed in zip(todo, self.prober.parse(units, dep, con, roots, keep_matrix=self.matrices)):
            out[k]["heads"] = parsed.heads
            out[k]["tree"] = to_brackets(parsed.tree, parsed.units) if parsed.tree is not None else None
            if self.matrices:
                out[k]["matrix"] = parsed.matrix.ravel().tolist()
        return out


# --- running ---------------------------------------------------------------------------------------
@dataclass
class ProbeResult:
    output_dir: Path
    metrics: dict = field(default_factory=dict)
    rows: int = 0
    threshold: float | None = None
    mlflow_run_id: str | None = None
    report: dict = field(default_factory=dict)
    """Evaluation details (segmentation under every threshold choice, baselines, oracle)."""
    published: str | None = None
    """The bucket location the outputs were uploaded to (output.dir as a URI)."""


def spread_rows(ds, n_rows: int, actors: int, batch_size: int):
    """The rows in blocks of about one batch each. A block goes to one actor call, and a corpus of
    one file arrives as one block: without this, one actor would probe it all while the others wait."""
    return ds.repartition(max(min(actors, n_rows), math.ceil(n_rows / batch_size))).materialize()


def _map(ds, recipe: ProbeRecipe, stage: str, threshold: float | None = None):
    from ray.data import ActorPoolStrategy
    c = recipe.compute
    args = (str(Path(recipe.model.path).resolve()), dataclasses.asdict(recipe.probe), stage, threshold,
            c.threads, recipe.output.matrices, recipe.eval.layers == "all")
    # An autoscaling pool: it grows to compute.actors as blocks queue up, and a cluster with room for
    # fewer actors than asked still runs the job.
    return ds.map_batches(ProbeWorker, fn_constructor_args=args, batch_size=c.batch_size, batch_format="pyarrow",
                          compute=ActorPoolStrategy(min_size=1, max_size=c.actors), num_cpus=c.cpus_per_actor)


def run_probe(recipe: ProbeRecipe, progress: bool = True) -> ProbeResult:
    import numpy as np

    from components.probing.segment import choose_threshold
    from pipelines.train import init_ray

    workdir = Path(recipe.workdir).expanduser().resolve()
    model_dir = Path(recipe.model.path).expanduser()
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"model.path '{recipe.model.path}' is not a model directory (no config.json)")
    _check_layer(model_dir, recipe.probe.layer)
    files = _files(recipe, workdir)
    from pipelines.storage import job_output, publish_output
    out_dir, publish_to = job_output(recipe.output.dir, workdir / "probe" / recipe.name)
    init_ray()

    def say(msg):
        if progress:
            print(msg, flush=True)

    t0 = time.perf_counter()
    ds = read_probe_rows(recipe, files).materialize()
    n_rows = ds.count()
    if n_rows == 0:
        raise ValueError("no rows to probe (check data.files, data.split and data.max_rows)")
    if "dependency" in recipe.probe.tasks and recipe.probe.root == "gold":
        missing = ds.filter(lambda r: "gold_heads" not in json.loads(r["record"])).count()
        if missing:
            raise ValueError(f"probe.root is 'gold' but {missing} of {n_rows} rows have no gold heads "
                             "(give CoNLL-U files, or use root: impact)")
    ds = spread_rows(ds, n_rows, recipe.compute.actors, recipe.compute.batch_size)
    say(f"probing {n_rows} rows with {recipe.compute.actors} actor(s)")
    threshold = None
    if "segment" in recipe.probe.tasks:
        ds = _map(ds, recipe, "chars").materialize()
        pooled = np.concatenate([np.asarray(s, dtype=np.float64) for s in ds.to_pandas()["scores"]] or [[]])
        t = recipe.probe.threshold
        threshold = float(t) if not isinstance(t, str) else choose_threshold(pooled, t, recipe.probe.threshold_log)
        say(f"segmentation threshold {threshold:.4g} ({t if isinstance(t, str) else 'fixed'}"
            f"{', log scores' if isinstance(t, str) and recipe.probe.threshold_log else ''})")
    scored = ds
    ds = _map(ds, recipe, "parse", threshold).materialize()
    elapsed = time.perf_counter() - t0

    report = evaluate_outputs(recipe, scored, ds, threshold)
    metrics = dict(report.get("metrics", {}))
    metrics.update({"rows": float(n_rows), "seconds": elapsed, "rows_per_s": n_rows / elapsed})
    if threshold is not None:
        metrics["seg_threshold"] = threshold
    _write_parquet(ds, out_dir)
    publish_output(out_dir, publish_to)
    say(f"wrote {n_rows} rows to {publish_to or out_dir} in {elapsed:.1f} s")
    if report.get("table"):
        say(format_table(report["table"]))
    else:
        for key in sorted(report.get("metrics", {})):
            say(f"  {key}: {report['metrics'][key]:.4f}")
    run_id = None
    if recipe.tracking.enabled and report.get("gold"):
        run_id = _log_mlflow(recipe, workdir, metrics, report)
    if recipe.output.save_to_model:
        save_calibration(model_dir, recipe.probe, threshold)
        say(f"settings and threshold saved to {model_dir / 'bert4ray.json'}")
    return ProbeResult(out_dir, metrics, n_rows, threshold, run_id, report, publish_to)


def _check_layer(model_dir: Path, layer: int) -> None:
    cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    L = int(cfg.get("num_hidden_layers", 0))
    if not -L <= layer <= L:
        raise ValueError(f"probe.layer {layer} does not exist: the model has {L} layers")


def _write_parquet(ds, out_dir: Path) -> None:
    import shutil
    import tempfile
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=_mkparent(out_dir)))
    try:
        ds.drop_columns(["record"]).write_parquet(str(tmp))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent


# --- MLflow and the model's calibration -----------------------------------------------------------
def _log_mlflow(recipe: ProbeRecipe, workdir: Path, metrics: dict, report: dict) -> str | None:
    from pipelines.tracking import tracked_run

    with tracked_run(recipe.tracking, workdir, recipe.name, recipe, {"bert4ray.task": "probe"}) as run:
        run.log_metrics(metrics)
        run.log_text(to_yaml(recipe), "recipe.yaml")
        run.log_text(json.dumps({k: v for k, v in report.items() if k != "metrics"}, indent=2,
                                ensure_ascii=False, default=float), "evaluation.json")
        if report.get("table"):
            run.log_text(format_table(report["table"]) + "\n", "table.txt")
    return run.run_id


CALIBRATION_KEY = "perturbed_masking"


def save_calibration(model_dir: Path, probe: ProbeSection, threshold: float | None) -> None:
    """Merge the probe settings and threshold into the model's bert4ray.json (atomically). The
    settings format tells readers that "mart" is the authors' MART."""
    from components.probing.constituency import SETTINGS_FORMAT
    path = Path(model_dir) / "bert4ray.json"
    meta = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    meta[CALIBRATION_KEY] = {"format": SETTINGS_FORMAT, "layer": probe.layer, "distance": probe.distance,
                             "subword": probe.subword, "threshold": threshold, "dependency": probe.dependency,
                             "constituency": probe.constituency}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)
