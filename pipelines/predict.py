"""`bert4ray predict`: offline inference over files as one Ray Data job.

    input files -> chunks planned on the driver (pipelines/predict_io.py)
      -> Ray Data: read tasks -> map_batches(Predictor actors, one model each; pipelines/inference.py)
      -> driver: each input file's good rows with its columns and the predictions -> OUT/<name>.parquet,
         its bad rows -> OUT/_errors/<name>.jsonl, all bad rows -> OUT.errors.jsonl
         (pipelines/predict_output.py)

IN, OUT and the model may be local or in an object store (`s3://...`). A bucket model is handed to
the actors as its URI, so each node downloads it into its own cache; a local or MLflow model is
handed over as the driver's directory, which other nodes must then see at the same path.

Everything that can be checked before Ray starts is: the model, the settings, every input file
(format, column) and OUT (a re-run must ask for the same predictions). A file whose output exists
is skipped, so an interrupted job continues where it stopped.

    from pipelines.predict import PredictJob, run_predict
    result = run_predict(PredictJob("embed", "runs/quickstart/model", "corpus.jsonl", "out"))
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

from pipelines import predict_io as pio
from pipelines import predict_output as pout
from pipelines.inference import KINDS, Predictor, kind_class

READ_CPUS = 0.25          # logical CPUs per read task: reading is light, and the actors need the rest
MANIFEST = "_predict.json"


# --- settings (--set section.key=value) ------------------------------------------------------
@dataclass
class SimilarSettings:
    n: int = 32
    """Candidates sampled per row."""
    k: int = 5
    """Kept after the rerank by cosine to the row's text."""
    max_length: int = 64
    """Longest text in tokens (longer rows are errors); also the default max_new_tokens."""


@dataclass
class ReplySettings:
    max_length: int = 256
    max_history: int | None = None
    """Keep at most this many recent turns."""


@dataclass
class ProbeSettings:
    threshold: float | None = None
    """Segmentation threshold; None: the model's calibrated one, else each text's Otsu threshold."""
    dependency: str | None = None
    """`eisner` or `chu_liu_edmonds`; None: the model's saved setting (default eisner)."""
    constituency: str | None = None
    """A MART variant or baseline (see README "MART"); None: the model's saved setting (default mart)."""


@dataclass
class AttributeSettings:
    steps: int = 50
    target: str | None = None
    """Class id or label to explain; None: each row's predicted class."""
    baseline: str = "pad"
    baseline_text: str | None = None
    rule: str = "gausslegendre"
    quantity: str = "prob"


def _decoding_section():
    """DecodingConfig's keys, each None unless set, so a kind's own defaults stay in force."""
    from components.decoding import DecodingConfig
    hints = typing.get_type_hints(DecodingConfig)
    return dataclasses.make_dataclass("DecodingSettings", [(f.name, hints[f.name] | None, None)
                                                           for f in dataclasses.fields(DecodingConfig)])


SECTIONS = {"embed": (), "classify": (), "similar": ("decoding", "similar"), "reply": ("decoding", "reply"),
            "segment": ("probe",), "parse": ("probe",), "attribute": ("attribute",)}


def load_settings(kind: str, overrides: list[str]) -> dict:
    """The kind's settings from `section.key=value` overrides; unknown keys and sections the kind
    does not use are errors."""
    from components.decoding import DecodingConfig
    from pipelines.recipe import load_sections
    for item in overrides:
        section = item.partition("=")[0].strip().split(".")[0]
        if section not in SECTIONS[kind]:
            takes = ", ".join(f"{s}.*" for s in SECTIONS[kind]) or "no settings"
            raise ValueError(f"--set {item}: '{section}' settings do not apply to {kind} (it takes {takes})")
    fields = [("decoding", _decoding_section()), ("similar", SimilarSettings), ("reply", ReplySettings),
              ("probe", ProbeSettings), ("attribute", AttributeSettings)]
    cls = dataclasses.make_dataclass("PredictSettings", [(n, t, field(default_factory=t)) for n, t in fields])
    loaded = load_sections(cls, None, overrides)
    out: dict = {}
    for section in SECTIONS[kind]:
        values = dataclasses.asdict(getattr(loaded, section))
        if section == "decoding":
            out["decoding"] = {k: v for k, v in values.items() if v is not None}
            DecodingConfig.from_dict(out["decoding"])                    # its own checks, now
        else:
            out.update(values)
    _check_choices(kind, out)
    return out


def _check_choices(kind: str, s: dict) -> None:
    if kind in ("segment", "parse"):
        from components.probing.constituency import ALGORITHMS as TREES
        from components.probing.dependency import ALGORITHMS as DEPS
        for key, valid in (("dependency", DEPS), ("constituency", TREES)):
            if s[key] is not None and s[key] not in valid:
                raise ValueError(f"probe.{key} must be one of {', '.join(valid)}, got {s[key]!r}")
    if kind == "attribute":
        from components.attribution import BASELINES, QUANTITIES, RULES
        for key, valid in (("rule", RULES), ("quantity", QUANTITIES), ("baseline", BASELINES)):
            if s[key] not in valid:
                raise ValueError(f"attribute.{key} must be one of {', '.join(valid)}, got {s[key]!r}")
        if s["steps"] < 1:
            raise ValueError(f"attribute.steps must be >= 1, got {s['steps']}")


# --- the job ---------------------------------------------------------------------------------
@dataclass
class PredictJob:
    kind: str
    model: str
    input: str
    output: str
    column: str = "text"
    prefix: str = ""
    batch_size: int = 64
    block_rows: int = 1024
    num_actors: int = 2
    num_gpus_per_actor: float = 0.0
    dtype: str | None = None          # the model's weights: float32 (default), bfloat16, float16
    cpus_per_actor: float | None = None
    overrides: list[str] = field(default_factory=list)
    mlflow: bool = False
    workdir: str = "bert4ray-runs"


@dataclass
class PredictResult:
    output: Path | str                 # a directory, or the bucket URI
    errors_path: Path | str | None
    files_done: int = 0
    files_skipped: int = 0
    rows: int = 0
    bad_rows: int = 0
    seconds: float = 0.0
    metrics: dict = field(default_factory=dict)
    mlflow_run_id: str | None = None


@dataclass
class Plan:
    job: PredictJob
    model_dir: Path
    settings: dict
    outputs: list[str]
    todo: list[pio.InputFile]
    done: list[pio.InputFile]
    out_dir: pout.OutputDir


def prepare(job: PredictJob) -> Plan:
    """Every check that needs no Ray: a ValueError / FileNotFoundError names the problem."""
    from pipelines.data import location_exists
    if job.kind not in KINDS:
        raise ValueError(f"unknown kind '{job.kind}'; kinds: {', '.join(KINDS)}")
    for name in ("batch_size", "block_rows", "num_actors"):
        if getattr(job, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(job, name)}")
    if job.dtype is not None:
        from components.devices import as_dtype
        as_dtype(job.dtype)                      # an unknown name fails here, not in every actor
    settings = load_settings(job.kind, job.overrides)
    model_dir = _check_model(job, settings)
    out_dir = pout.OutputDir(job.output)
    outputs = [job.prefix + c for c in kind_class(job.kind).columns]
    files = pio.find_inputs(job.input, str(out_dir))
    finished = {f.name for f in files if location_exists(out_dir.location(f.name))}
    done = [f for f in files if f.name in finished]
    todo = [f for f in files if f.name not in finished]
    for index, f in enumerate(todo):
        pio.inspect(f, job.column, outputs)
        pio.plan(f, index, job.column, outputs)
    _check_manifest(out_dir, job, model_dir, settings)
    return Plan(job, model_dir, settings, outputs, todo, done, out_dir)


def _check_model(job: PredictJob, settings: dict) -> Path:
    from components.config import ModelConfig
    from pipelines.model_store import resolve_model
    model_dir = resolve_model(job.model)
    config = ModelConfig.load(model_dir)
    if job.kind in ("classify", "attribute") and not config.num_labels:
        raise ValueError(f"{job.kind} needs a model trained with the classify task; '{job.model}' has no "
                         "classifier head (num_labels = 0)")
    target = settings.get("target")
    if job.kind == "attribute" and target is not None:
        names = list(config.labels) or [str(i) for i in range(config.num_labels)]
        if target not in names and not (target.isdigit() and int(target) < len(names)):
            raise ValueError(f"attribute.target {target!r} is not a label of the model ({', '.join(names)})")
    return model_dir


def _check_manifest(out_dir: pout.OutputDir, job: PredictJob, model_dir: Path, settings: dict) -> None:
    """OUT records what it holds; a re-run into it must ask for the same predictions, or the
    skipped files and the new ones would disagree."""
    from components.weights import model_fingerprint
    manifest = {"kind": job.kind, "model": model_fingerprint(model_dir), "column": job.column,
                "prefix": job.prefix, "settings": settings}
    location = out_dir.location(MANIFEST)
    text = pout.read_text(location)
    if text is not None:
        old = json.loads(text)
        if old != manifest:
            diff = [k for k in manifest if old.get(k) != manifest[k]]
            raise ValueError(f"'{out_dir}' holds predictions with another {', '.join(diff)}; give another --output "
                             "(a re-run skips the files already done only when it asks for the same)")
        return
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    pout.publish(location, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def actor_resources(job: PredictJob) -> tuple[float, int, bool]:
    """(logical CPUs, torch threads, repartition?) per actor. The actors share the cluster's CPUs
    after the Ray Data tasks' own: a read task asks for READ_CPUS and the streaming repartition
    for 1 CPU (Ray's default, not settable). Were the actors to take every CPU, those tasks could
    never run and the job would wait forever (2 actors x 1 CPU on 2 CPUs does). On fewer than 2
    CPUs the repartition is left out (each chunk then goes to one actor call whole). Threads
    follow the machine's share per actor, not the logical CPUs."""
    import ray
    total = ray.cluster_resources().get("CPU", 1.0)
    repartition = total >= 2
    reserved = 1.0 if repartition else READ_CPUS
    cpus = job.cpus_per_actor if job.cpus_per_actor is not None else (total - reserved) / job.num_actors
    if cpus <= 0 or job.num_actors * cpus + reserved > total + 1e-9:
        raise ValueError(f"{job.num_actors} actors x {cpus:g} CPUs plus {reserved:g} for reading do not fit the "
                         f"cluster's {total:g} CPUs; lower --num-actors or --cpus-per-actor")
    threads = round(cpus) if job.cpus_per_actor is not None else int(total // job.num_actors)
    return cpus, max(1, threads), repartition


def build_dataset(plan: Plan):
    import ray
    from ray.data import ActorPoolStrategy

    from pipelines.model_store import for_actors
    job = plan.job
    chunks = [{"chunk": json.dumps(c)} for f in plan.todo for c in f.chunks]
    cpus, threads, repartition = actor_resources(job)
    ds = ray.data.from_items(chunks, override_num_blocks=len(chunks))
    ds = ds.map_batches(pio.read_chunk, batch_size=1, batch_format="pyarrow", num_cpus=READ_CPUS)
    if repartition:
        # A chunk is up to a few MB of rows and one block goes to one actor call: cut blocks to
        # block_rows (streaming, as rows arrive) so every actor gets work from the first chunk on.
        ds = ds.repartition(target_num_rows_per_block=job.block_rows)
    kwargs = {"settings": plan.settings, "batch_size": job.batch_size, "threads": threads, "prefix": job.prefix,
              "device": "cuda" if job.num_gpus_per_actor > 0 else "cpu", "dtype": job.dtype}
    return ds.map_batches(
        Predictor, fn_constructor_args=(job.kind, for_actors(job.model, plan.model_dir)),
        fn_constructor_kwargs=kwargs, batch_size=job.block_rows, batch_format="pyarrow",
        compute=ActorPoolStrategy(size=job.num_actors), num_cpus=cpus, num_gpus=job.num_gpus_per_actor or None)


class _Writer:
    """Gathers the actors' rows per input file and writes a file as soon as all its rows are back."""

    def __init__(self, plan: Plan):
        self.plan, self.pending = plan, {i: [] for i in range(len(plan.todo))}
        self.received = dict.fromkeys(self.pending, 0)
        self.errors: dict[int, list[dict]] = {}
        self.actor_seconds, self.rows, self.schema = 0.0, 0, None

    def add(self, block) -> int:
        import pyarrow.compute as pc
        self.actor_seconds += float(pc.sum(block["_seconds"]).as_py() or 0.0)
        self.rows += block.num_rows
        block = block.select(["_file", "_row", "_error", *self.plan.outputs])
        self.schema = self.schema or block.schema
        for index in pc.unique(block["_file"]).to_pylist():
            part = block.filter(pc.equal(block["_file"], index))
            self.pending[index].append(part)
            self.received[index] += part.num_rows
            if self.received[index] == self.plan.todo[index].rows:
                self._write(index, self.pending.pop(index))
        return block.num_rows

    def _write(self, index: int, parts: list) -> None:
        import pyarrow as pa
        outputs = self.plan.outputs if self.schema is not None else []   # none known: nothing ran
        results = pa.concat_tables(parts) if parts else (self.schema or pa.schema(
            [("_file", pa.int32()), ("_row", pa.int64()), ("_error", pa.string())])).empty_table()
        self.errors[index] = pout.write_output(self.plan.todo[index], self.plan.out_dir, results, outputs)

    def finish(self) -> None:
        """Files without rows are written last (with the prediction columns when any ran)."""
        for index, f in enumerate(self.plan.todo):
            if index in self.errors:
                continue
            if self.received[index] != f.rows:
                raise RuntimeError(f"{f.path}: {self.received[index]} of {f.rows} rows came back")
            self._write(index, self.pending.pop(index, []))


def run_predict(job: PredictJob, progress: bool = True, plan: Plan | None = None) -> PredictResult:
    """Run the job (see the module docstring); `plan` from `prepare` when the caller checked first."""
    plan = plan or prepare(job)
    tracker = _start_run(job, plan) if job.mlflow or os.environ.get("MLFLOW_TRACKING_URI") else None
    try:
        writer, t0, first = _Writer(plan), time.perf_counter(), None
        if any(f.chunks for f in plan.todo):
            from pipelines.train import init_ray
            init_ray()
            _quiet_data()
            t0 = time.perf_counter()
            with _Progress(sum(f.rows for f in plan.todo), progress) as bar:
                for block in build_dataset(plan).iter_batches(batch_size=None, batch_format="pyarrow"):
                    first = first or (time.perf_counter() - t0, block.num_rows)      # actors are up
                    bar.advance(writer.add(block))
        writer.finish()
        result = _summarise(plan, writer, time.perf_counter() - t0, first or (0.0, 0))
    except BaseException as exc:
        if tracker:
            tracker.end(exc)
        raise
    if tracker:
        tracker.log_metrics(result.metrics)
        if isinstance(result.errors_path, Path):
            tracker.log_artifact(result.errors_path)
        elif result.errors_path:                        # in a bucket: the run keeps a copy
            tracker.log_text(pout.read_text(result.errors_path) or "", Path(result.errors_path).name)
        tracker.end()
        result.mlflow_run_id = tracker.run_id
    return result


def _quiet_data() -> None:
    import logging
    import warnings

    from ray.data import DataContext
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)   # "progress bars disabled"
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")  # a small input
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False            # ours counts rows of the whole job instead
    ctx.execution_options.preserve_order = False  # rows carry their file and row: order is restored per file


def _summarise(plan: Plan, writer: _Writer, seconds: float, first: tuple[float, int]) -> PredictResult:
    """Gather every file's bad rows (the skipped files' from their earlier run) into OUT.errors.jsonl."""
    written = {f.name: writer.errors[i] for i, f in enumerate(plan.todo)}
    errors = []
    for f in sorted(plan.todo + plan.done, key=lambda f: f.name):
        errors += written[f.name] if f.name in written else pout.read_errors(plan.out_dir, f)
    errors_location = plan.out_dir.beside(".errors.jsonl")
    pout.write_jsonl(errors_location, errors)
    bad_now = sum(len(v) for v in writer.errors.values())
    startup, first_rows = first
    steady = seconds - startup       # after the first rows came back: the actors' start-up left out
    metrics = {"rows": writer.rows, "rows_ok": writer.rows - bad_now, "rows_bad": bad_now, "rows_bad_total": len(errors),
               "files_done": len(plan.todo), "files_skipped": len(plan.done), "seconds": seconds,
               "startup_seconds": startup, "rows_per_s": writer.rows / seconds if seconds > 0 else 0.0,
               "steady_rows_per_s": (writer.rows - first_rows) / steady if steady > 0 else 0.0,
               "actor_seconds": writer.actor_seconds}
    out = plan.out_dir
    return PredictResult(out.shown(str(out)), out.shown(errors_location) if errors else None, len(plan.todo),
                         len(plan.done), writer.rows, len(errors), seconds, metrics)


class _Progress:
    """A live line on stderr: rows done of all, rows/s since the first rows came back, time left."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.bar, self.start = total, enabled, None, None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self.bar = Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
                                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=False)
            self.bar.start()
            self.task = self.bar.add_task("predict", total=self.total, rate="starting actors ...")
        return self

    def advance(self, rows: int) -> None:
        now = time.perf_counter()
        self.start = self.start or now
        if self.bar:
            done = self.bar.tasks[0].completed + rows
            rate = f"{done / (now - self.start):,.0f} rows/s" if now > self.start else ""
            self.bar.update(self.task, completed=done, rate=rate)

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()
        return False


def _start_run(job: PredictJob, plan: Plan):
    """One MLflow run per job: the job as params; the counts, timings and errors file at the end."""
    from pipelines.sections import TrackingSection
    from pipelines.tracking import JobRun
    run = JobRun.start(TrackingSection(experiment="bert4ray-predict"), Path(job.workdir), f"predict-{job.kind}",
                       tags={"bert4ray.command": "predict", "bert4ray.kind": job.kind})
    params = {k: v for k, v in dataclasses.asdict(job).items() if k not in ("overrides", "mlflow", "workdir")}
    run.log_params({**params, **{f"settings.{k}": v for k, v in plan.settings.items()}})
    return run
