"""The training driver: recipe -> data -> vocabulary -> Ray Train (DeepSpeed) -> model directory.

    from pipelines.recipe import load_recipe
    from pipelines.train import run_training
    result = run_training(load_recipe("pipelines/recipes/mlm-tiny.yaml"), output="out/model")
    result.model_dir, result.metrics, result.mlflow_run_id

Layout under the recipe's workdir:
    runs/<run id>/          recipe.yaml, vocab.txt, model/ (default export target)
    ray/<run id>/           Ray Train storage: DeepSpeed checkpoints (resume reads these)
    runs/<name>.latest      the last run id of this recipe name (what --resume continues)
    corpora/                bundled corpora converted to JSON Lines
    mlflow.db, mlartifacts/ MLflow tracking (unless MLFLOW_TRACKING_URI is set)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from components.config import ModelConfig
from components.io import atomic_directory
from pipelines import data as data_mod
from pipelines.job import new_run_id
from pipelines.recipe import Recipe, dump_recipe
from pipelines.storage import Workdir, local_output, publish_model
from pipelines.tasks import get_task
from pipelines.worker import MODEL_SUBDIR, train_loop


@dataclass
class TrainingResult:
    model_dir: Path | None
    """The exported model directory (None when checkpoint.stop_after ended the run early)."""
    model_location: str = ""
    """Where the model was published: the bucket URI for an object-store workdir or --output,
    else the directory itself."""
    metrics: dict = field(default_factory=dict)
    mlflow_run_id: str | None = None
    run_id: str = ""
    data_report: data_mod.DataReport | None = None
    history: list[dict] = field(default_factory=list)
    """Every progress record the workers sent (step metrics, then evaluations)."""


def quiet_console() -> None:
    """Keep the driver's terminal for bert4ray's own progress: Ray Data's per-dataset INFO lines
    still go to its log file (under the Ray session's logs/), only warnings reach the console."""
    import logging
    import warnings

    import ray.data  # noqa: F401 - configures the "ray.data" logger and its handlers
    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ != "SessionFileHandler":       # the console, not the session log file
            handler.setLevel(logging.WARNING)
    # Our row filters are Python predicates over JSON rows by design; expressions cannot read them.
    warnings.filterwarnings("ignore", message="Use 'expr' instead of 'fn'")


def deepspeed_accelerator(use_gpu: bool) -> str:
    """DeepSpeed's accelerator for the workers: DS_ACCELERATOR when set, else `cuda` for a GPU
    run and `cpu` (gloo) otherwise."""
    return os.environ.get("DS_ACCELERATOR") or ("cuda" if use_gpu else "cpu")


def init_ray(num_cpus: int | None = None, use_gpu: bool = False) -> None:
    """Connect to RAY_ADDRESS, or start a local Ray; either way the workers get DeepSpeed's
    accelerator for the run (`deepspeed_accelerator`)."""
    import ray
    quiet_console()
    if ray.is_initialized():
        return
    os.environ["DS_ACCELERATOR"] = deepspeed_accelerator(use_gpu)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env = {"env_vars": {"DS_ACCELERATOR": os.environ["DS_ACCELERATOR"]}}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=env, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, runtime_env=env)


def _check_cpus(need: int) -> None:
    """A local Ray started earlier with fewer logical CPUs than the run needs would leave the
    workers waiting for data forever: refuse instead. (A cluster may scale up: not checked there.)"""
    import ray
    if os.environ.get("RAY_ADDRESS"):
        return
    have = ray.cluster_resources().get("CPU", 0)
    if have < need:
        raise ValueError(f"the local Ray has {have:g} logical CPUs but this run needs {need} (workers x "
                         "cpus_per_worker + 1 for Ray Data): start Ray with more (ray.init(num_cpus=...)) "
                         "or lower scaling.num_workers / scaling.cpus_per_worker")


def _resolve_files(recipe: Recipe, wd: Workdir) -> tuple[list[str], list[str]]:
    cfg = recipe.data
    if cfg.source != "files":
        from pipelines.corpora import corpus_file
        path = corpus_file(cfg.source, wd.local / "corpora")
        rel = f"corpora/{path.name}"
        if wd.remote:                  # read by Ray Data tasks on any node: from the bucket
            wd.push_file(rel)
        train = [wd.location(rel)]
    else:
        train = data_mod.check_files(cfg.train)
    return train, data_mod.check_files(cfg.validation) if cfg.validation else []


def on_this_node() -> dict:
    """Actor options that keep a driver-side helper actor (progress queue, stop board) on the
    driver's node, using no CPU: left to the scheduler it may land on a worker node, and losing
    that node would then take the driver down with it instead of letting the run resume."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    node = ray.get_runtime_context().get_node_id()
    return {"num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}


def _nodes_alive() -> int:
    import ray
    return sum(1 for n in ray.nodes() if n.get("Alive"))


def _vocabulary(recipe: Recipe, train_ds, task) -> str:
    m = recipe.model
    if m.init_from:
        path = Path(m.init_from) / "vocab.txt"
    elif m.vocab:
        path = Path(m.vocab)
    else:
        tokens = data_mod.build_vocab(train_ds, task, m.vocab_min_count, m.vocab_max_size, m.lowercase)
        return "\n".join(tokens) + "\n"
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary '{path}' does not exist")
    return path.read_text(encoding="utf-8")


def _model_config(recipe: Recipe, vocab_size: int, task, sep_id: int | None = None) -> ModelConfig:
    m = recipe.model
    if m.init_from:
        cfg = ModelConfig.load(m.init_from)
        changes = {"attention": m.attention} if m.attention else {}
    else:
        cfg = ModelConfig(vocab_size=vocab_size)
        changes = {k: getattr(m, k) for k in (
            "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "hidden_dropout_prob", "attention_probs_dropout_prob", "hidden_act")}
        changes["attention"] = m.attention or "softmax"
    changes.update(task.model_overrides())
    if changes.get("termination", cfg.termination) != "none" and cfg.eos_token_id is None:
        changes.setdefault("eos_token_id", sep_id)      # a self-terminating head ends generation at [SEP]
    cfg = dataclasses.replace(cfg, **changes)
    if cfg.vocab_size < vocab_size:
        raise ValueError(f"vocabulary has {vocab_size} tokens but the model only {cfg.vocab_size}")
    return cfg


def _local_init_from(recipe: Recipe, workdir: Path) -> Recipe:
    """The recipe with model.init_from as a local directory: a path as it is, an MLflow URI
    downloaded from the run's tracking store into a cache under the workdir (which every node of a
    cluster mounts), so the workers load it as a directory."""
    from components.locations import is_uri
    reference = recipe.model.init_from
    if not reference:
        return recipe
    if not is_uri(reference):
        if not Path(reference).is_dir():
            raise FileNotFoundError(f"model.init_from '{reference}' is not a directory")
        # Absolute: Ray Train workers run in their own working directory, not the command's.
        path = Path(reference).resolve()
    else:
        from pipelines.model_store import resolve_model
        from pipelines.tracking import tracking_uri
        cache = os.environ.get("BERT4RAY_MODEL_CACHE") or workdir / "cache" / "models"
        try:
            path = resolve_model(reference, cache_dir=cache, tracking_uri=tracking_uri(workdir))
        except (FileNotFoundError, ValueError) as exc:
            raise ValueError(f"model.init_from: {exc}") from None
    return dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, init_from=str(path)))


def _worker_recipe(local: Recipe, written: Recipe, wd: Workdir) -> Recipe:
    """The recipe the workers get: a bucket init_from stays a URI, which each worker resolves into
    its own node's cache (the driver's local copy is on another disk). With a bucket workdir, a
    model the driver fetched through MLflow (`models:/`, `runs:/`) is published to the bucket
    (`<workdir>/init/<content fingerprint>`) and the workers get that URI: nodes share no disk,
    and MLflow's store may be the driver's own file."""
    from components import objectstore
    from components.locations import is_uri
    reference = written.model.init_from
    if reference and objectstore.is_remote(reference):
        return dataclasses.replace(local, model=dataclasses.replace(local.model, init_from=reference))
    if reference and is_uri(reference) and wd.remote:
        from components.weights import model_fingerprint
        fetched = Path(local.model.init_from)
        location = wd.location(f"init/{model_fingerprint(fetched)[:24]}")
        if not objectstore.exists(objectstore.join(location, objectstore.MARKER)):
            publish_model(fetched, location)
        return dataclasses.replace(local, model=dataclasses.replace(local.model, init_from=location))
    return local


def _run_id(recipe: Recipe, wd: Workdir, resume: bool) -> str:
    """A new run's id, or (resume) the last run of this recipe name, from runs/<name>.latest."""
    if resume:
        latest = wd.read_text(f"runs/{recipe.name}.latest")
        if latest is None:
            raise FileNotFoundError(f"nothing to resume: no earlier run named '{recipe.name}' in {wd}")
        return latest.strip()
    return new_run_id(recipe.name)


def _start_ray(scaling) -> None:
    """Ray with the logical CPUs of the Train workers plus one: Ray Data's tokenization tasks need
    it, or the workers wait forever for their data."""
    need = int(scaling.num_workers * scaling.cpus_per_worker + 0.999) + 1
    init_ray(max(os.cpu_count() or 1, need), use_gpu=scaling.use_gpu)
    _check_cpus(need)


def _steps(recipe: Recipe, train_rows: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps) for `train_rows` training rows."""
    per_step = recipe.scaling.num_workers * recipe.optim.batch_size * recipe.optim.grad_accum
    steps_per_epoch = train_rows // per_step
    if steps_per_epoch == 0:
        raise data_mod.DataError(f"{train_rows} training rows do not fill one step of {per_step} "
                                 "(workers x batch_size x grad_accum)")
    return steps_per_epoch, recipe.schedule.max_steps or steps_per_epoch * recipe.schedule.epochs


def run_training(recipe: Recipe, output: str | Path | None = None, resume: bool = False,
                 progress: bool = True, recipe_path: str | Path | None = None,
                 on_record: Callable[[dict], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> TrainingResult:
    """Train the recipe on Ray Train and export the final model directory.

    output: where the model directory goes (default `<workdir>/runs/<run id>/model`).
    resume: continue the last run of this recipe name from its latest checkpoint.
    on_record: called in this thread with every progress record as it arrives (step metrics
        `{"step", "total", "epoch", "loss", ...}` and evaluations `{"step", "total", "eval_...": ...}`),
        e.g. to report intermediate evaluations to Ray Tune (`bert4ray tune`).
    should_stop: a picklable callable that the rank-0 worker asks at every logging / evaluation
        step; True ends the run there as `checkpoint.stop_after` does (model_dir None, MLflow run
        KILLED). `bert4ray tune` stops trials that ASHA gives up on this way.
    """
    job = TrainingJob(recipe, output, resume)
    job.setup()
    failed = False
    try:
        job.prepare_data()
        outcome = job.fit(progress, on_record, should_stop)
        metrics = dict(outcome.metrics or {})
        if metrics.get("stopped"):                 # checkpoint.stop_after: no export yet
            job.tracker.finish_stopped()
            return job.result(None, metrics)
        return job.export(outcome.checkpoint, metrics)
    except BaseException as exc:
        failed = True
        job.tracker.finish_failed(exc)
        raise
    finally:
        job.push_tracking(failed)


class TrainingJob:
    """One training run, in the order run_training takes its steps: the constructor names the run
    and checks its inputs (before Ray), then setup (Ray, run directory, MLflow run), prepare_data
    (splits, vocabulary, model config, tokenized datasets), fit (Ray Train) and export."""

    def __init__(self, recipe: Recipe, output: str | Path | None, resume: bool):
        self.wd = Workdir(recipe.workdir)          # a bucket URI is checked here: one line, nothing written
        self.output, self.resume = output, resume
        local_output(output, self.wd, "-")         # checks an --output URI early
        self.run_id = _run_id(recipe, self.wd, resume)
        self.run_dir = self.wd.local / "runs" / self.run_id
        self.train_files, self.val_files = _resolve_files(recipe, self.wd)    # before Ray: bad paths fail fast
        self.written = recipe                      # MLflow and recipe.yaml keep an init_from URI
        self.recipe = _local_init_from(recipe, self.wd.local)
        self.worker_recipe = _worker_recipe(self.recipe, recipe, self.wd)
        self.history: list[dict] = []              # every progress record the workers sent

    def setup(self) -> None:
        """The MLflow experiment, Ray, the task, the run directory (recipe.yaml; runs/<name>.latest
        names this run) and the MLflow run (a resumed run continues its own)."""
        from pipelines.tracking import Tracker
        wd, recipe = self.wd, self.recipe
        wd.pull_file("mlflow.db")                  # a bucket workdir keeps MLflow's store there too
        self.tracker = Tracker(self.written, wd.local, artifact_root=wd.artifact_root())   # DB and experiment first
        _start_ray(recipe.scaling)
        self.task = get_task(recipe.task.name)(recipe.task.options)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        wd.write_text(f"runs/{recipe.name}.latest", self.run_id)
        dump_recipe(self.written, self.run_dir / "recipe.yaml")
        wd.push_file(f"runs/{self.run_id}/recipe.yaml")
        state = wd.read_text(f"runs/{self.run_id}/state.json") if self.resume else None
        previous = json.loads(state) if state else {}
        self.tracker.start(self.run_id, resume_run_id=previous.get("mlflow_run_id"),
                           recipe_file=self.run_dir / "recipe.yaml")
        wd.write_text(f"runs/{self.run_id}/state.json", json.dumps({"mlflow_run_id": self.tracker.run_id}))
        wd.push_file("mlflow.db")                  # the run exists in the bucket's copy even if killed

    def prepare_data(self) -> None:
        """The checked splits, the vocabulary (written to the run directory), the model config, the
        step counts (logged to MLflow) and the tokenized datasets the workers read."""
        recipe, task = self.recipe, self.task
        train_ds, self.val_ds, self.report = data_mod.load_splits(recipe, task, self.train_files, self.val_files)
        task.prepare(train_ds)
        self.vocab_text = _vocabulary(recipe, train_ds, task)
        self.wd.write_text(f"runs/{self.run_id}/vocab.txt", self.vocab_text)
        vocab_tokens = self.vocab_text.splitlines()
        self.model_cfg = _model_config(recipe, len(vocab_tokens), task,
                                       sep_id=vocab_tokens.index("[SEP]") if "[SEP]" in vocab_tokens else None)
        self.steps_per_epoch, self.total = _steps(recipe, self.report.train)
        self.tracker.log_params({"data.train_rows": self.report.train, "data.validation_rows": self.report.validation,
                                 "data.bad_rows": self.report.bad, "model.vocab_size": self.model_cfg.vocab_size,
                                 "train.total_steps": self.total, "train.steps_per_epoch": self.steps_per_epoch})
        tok = data_mod.tokenizer_from_text(self.vocab_text, recipe.model.lowercase)
        max_len = min(recipe.data.max_length, self.model_cfg.max_position_embeddings, tok.max_length)
        feed_train, feed_val = train_ds, self.val_ds
        if _nodes_alive() > 1:        # blocks on another node die with it: the workers read the files
            feed_train, feed_val = data_mod.reread_splits(recipe, task, self.train_files, self.val_files)
        self.datasets = {"train": data_mod.tokenize(feed_train, task, self.vocab_text, recipe.model.lowercase, max_len)}
        if self.report.validation:
            self.datasets["validation"] = data_mod.tokenize(feed_val, task, self.vocab_text,
                                                            recipe.model.lowercase, max_len)

    def fit(self, progress: bool, on_record: Callable[[dict], None] | None,
            should_stop: Callable[[], bool] | None):
        """Run the workers on Ray Train and follow their progress records as they arrive (the live
        line, MLflow metrics, on_record, self.history). Returns Ray Train's Result."""
        from ray.util.queue import Queue
        queue = Queue(maxsize=10_000, actor_options=on_this_node())
        trainer = self._trainer(queue, should_stop)
        thread, outcome = _fit_in_background(trainer)
        with _Progress(self.total, enabled=progress) as bar:
            for record in _records_until_done(queue, thread):
                self.history.append(record)
                bar.update(record)
                if on_record is not None:
                    on_record(record)
                self.tracker.log_metrics({k: v for k, v in record.items() if k not in ("step", "total", "epoch")},
                                         step=int(record["step"]))
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        result = outcome["result"]
        if result.error:
            raise result.error
        return result

    def _trainer(self, queue, should_stop: Callable[[], bool] | None):
        import ray.train
        from ray.data import ExecutionOptions
        from ray.train.torch import TorchTrainer
        recipe, task, s = self.recipe, self.task, self.recipe.scaling
        loop_config = {"recipe": self.worker_recipe, "task": task, "model_config": dataclasses.asdict(self.model_cfg),
                       "vocab_text": self.vocab_text, "steps_per_epoch": self.steps_per_epoch,
                       "total_steps": self.total, "progress": queue,
                       "metadata": {"run_id": self.run_id, "labels": task.meta.get("labels")},
                       "has_validation": "validation" in self.datasets, "should_stop": should_stop}
        return TorchTrainer(
            train_loop, train_loop_config=loop_config, datasets=self.datasets,
            # Every rank reads the whole stream in order and keeps its own rows (see worker.py).
            dataset_config=ray.train.DataConfig(datasets_to_split=[],
                                                execution_options=ExecutionOptions(preserve_order=True)),
            scaling_config=ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                                   resources_per_worker={"CPU": s.cpus_per_worker,
                                                                         **s.resources_per_worker}),
            run_config=ray.train.RunConfig(
                name=self.run_id, storage_path=self.wd.ray_storage(),
                failure_config=ray.train.FailureConfig(max_failures=recipe.checkpoint.max_failures),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=recipe.checkpoint.keep)))

    def export(self, checkpoint, metrics: dict) -> TrainingResult:
        """The model directory from the final checkpoint, with the task's report on validation rows
        and the model card; published to a bucket when asked; the MLflow run finished."""
        from pipelines.model_card import write_model_card
        target, publish_to = local_output(self.output, self.wd, self.run_id)
        with checkpoint.as_directory() as d, atomic_directory(target) as tmp:
            src = Path(d) / MODEL_SUBDIR
            if not src.is_dir():
                raise RuntimeError(f"the final checkpoint {checkpoint.path} holds no exported model")
            shutil.copytree(src, tmp, dirs_exist_ok=True)
        if self.task.report_rows and self.report.validation:
            rows = [json.loads(r["record"]) for r in self.val_ds.take(self.task.report_rows)]
            extra, files = self.task.export_report(target, rows)
            metrics.update(extra)
            self.tracker.log_text_artifacts(files, extra)
        write_model_card(target, self.written, metrics, self.report, run_id=self.run_id,
                         mlflow_run_id=self.tracker.run_id)
        if publish_to:
            publish_model(target, publish_to)
        self.tracker.finish_success(target, metrics, self.report)
        return self.result(target, metrics, location=publish_to or str(target))

    def result(self, model_dir: Path | None, metrics: dict, location: str = "") -> TrainingResult:
        return TrainingResult(model_dir=model_dir, model_location=location, metrics=metrics,
                              mlflow_run_id=self.tracker.run_id, run_id=self.run_id, data_report=self.report,
                              history=self.history)

    def push_tracking(self, failed: bool) -> None:
        """MLflow's store back to a bucket workdir, at the end of every run."""
        try:
            self.wd.push_file("mlflow.db")
        except Exception:
            if not failed:                     # never hide the error that ended the run
                raise


def _fit_in_background(trainer) -> tuple[threading.Thread, dict]:
    """trainer.fit() in a thread, so this one can follow the progress queue; the thread's dict gets
    "result" or "error"."""
    outcome: dict = {}

    def fit():
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    return thread, outcome


def _records_until_done(queue, thread: threading.Thread) -> Iterator[dict]:
    """The workers' progress records as they arrive, until the fitting thread has ended."""
    from ray.util.queue import Empty
    while True:
        try:
            yield queue.get(timeout=0.5)
        except Empty:
            if not thread.is_alive():
                return


class _Progress:
    """The live line on the driver: step, loss, tokens/s and ETA (rich)."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.enabled = total, enabled
        self.progress = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
            self.progress = Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)
            self.progress.start()
            self.task_id = self.progress.add_task("train", total=self.total, info="starting workers ...")
        return self

    def update(self, record: dict) -> None:
        if not self.progress:
            return
        info = "  ".join(f"{k} {v:.4g}" for k, v in record.items()
                         if k in ("loss", "tokens_per_s", "lr") or k.startswith("eval_"))
        self.progress.update(self.task_id, completed=record["step"], info=info)

    def __exit__(self, *exc):
        if self.progress:
            self.progress.stop()
        return False
