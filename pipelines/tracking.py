"""MLflow tracking of a job's run, all from the driver (workers send records to it).

    with tracked_run(recipe.tracking, workdir, run_id, recipe, tags={"bert4ray.command": "mgs"}) as run:
        run.log_metrics({"loss": 0.1}, step=1)         # a no-op when tracking.enabled is false
        run.log_artifact("out/history.json")

`tracked_run` is every job's run (train, tune, mgs, probe): the resolved recipe flattened into
params, tags with the git commit, and an end status of FINISHED, FAILED (the error as a tag) when an
exception leaves the block, or KILLED on Ctrl-C. A training run (`Tracker`) adds step and evaluation
metrics, the recipe file and the exported model (a pyfunc model from code holding the model
directory, registered under `tracking.registered_model`). The tracking URI is MLFLOW_TRACKING_URI,
else `sqlite:///<workdir>/mlflow.db` with artifacts under `<workdir>/mlartifacts`.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc

from pipelines.sections import TrackingSection, flatten, to_dict


def tracking_uri(workdir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def param_value(value) -> str:
    """A value as an MLflow param (MLflow keeps at most 500 characters)."""
    return ("" if value is None else str(value))[:500]


def recipe_params(recipe) -> dict[str, str]:
    """A recipe dataclass flattened into MLflow params (`section.key`)."""
    return {k: param_value(v) for k, v in flatten(to_dict(recipe)).items()}


def run_tags(tags: dict) -> dict:
    """`tags` plus the git commit of this checkout, when there is one."""
    commit = git_commit()
    return {**tags, "mlflow.source.git.commit": commit} if commit else dict(tags)


def use_experiment(workdir: Path, name: str, artifact_root: str | None = None) -> str:
    """Point MLflow at the workdir's store (or MLFLOW_TRACKING_URI) and return the id of experiment
    `name`, created if missing. Call it in one process before any worker or trial could race to
    create the same experiment. `artifact_root`: where a new experiment's artifacts go (a bucket
    workdir's `s3://.../mlartifacts`; MLflow's S3 store reads the endpoint and keys from the
    environment)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    explicit = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri(workdir))
    if explicit is None:
        # set_tracking_uri also exports MLFLOW_TRACKING_URI: left there, the next run in this
        # process (another workdir) would log into this one's database.
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # A server names its own artifact store; a local database keeps artifacts beside it
    # (MLflow's default, ./mlruns of the current directory, is a temporary copy in a Ray job).
    location = artifact_root or (None if explicit else (workdir / "mlartifacts").resolve().as_uri())
    return mlflow.create_experiment(name, artifact_location=location)


# What the pyfunc model needs besides the components/ code it carries, pinned to this environment.
PYFUNC_REQUIREMENTS = ("torch", "numpy", "tokenizers", "safetensors")


def pyfunc_requirements() -> list[str]:
    from importlib.metadata import version
    # A local build label (torch's "+cpu") is no PyPI version; "==2.13.0" matches any build of it.
    return [f"{name}=={version(name).split('+')[0]}" for name in PYFUNC_REQUIREMENTS]


def pyfunc_signature(model_dir: Path):
    import json

    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    width = len(config["id2label"]) if config.get("id2label") and any(
        "SequenceClassification" in a for a in config.get("architectures", [])) else config["hidden_size"]
    return ModelSignature(inputs=Schema([ColSpec("string")]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, width))]))


def log_pyfunc_model(model_dir: Path, registered_model: str | None = None):
    """Log `model_dir` as an MLflow pyfunc model from code (pipelines/pyfunc_model.py; no pickled
    object) into the active run, with components/ as its code, requirements pinned to this
    environment, bert4ray's version and commit as metadata, and a signature: texts in, float32
    unit vectors (or class probabilities) out."""
    from importlib.metadata import PackageNotFoundError, version
    root = Path(__file__).resolve().parents[1]
    try:
        own = version("bert4ray")
    except PackageNotFoundError:
        own = "unknown"
    with warnings.catch_warnings():
        # The signature is given explicitly; an input example would load and run the model here.
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(root / "pipelines" / "pyfunc_model.py"),
            artifacts={"model_dir": str(model_dir)}, code_paths=[str(root / "components")],
            pip_requirements=pyfunc_requirements(), signature=pyfunc_signature(model_dir),
            metadata={"bert4ray_version": own, "bert4ray_commit": git_commit() or "unknown"},
            registered_model_name=registered_model)


def error_text(exc: BaseException) -> str:
    """The `bert4ray.error` tag of a run that an exception ended."""
    return f"{type(exc).__name__}: {exc}"[:5000]


def end_status(exc: BaseException) -> str:
    """KILLED for Ctrl-C (nothing went wrong in the run), else FAILED."""
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


class JobRun:
    """The active MLflow run of a job, or a stand-in that logs nothing (tracking off: run_id None)."""

    def __init__(self, run_id: str | None = None):
        self.run_id = run_id
        self.status = "FINISHED"
        """How the run ends when its block ends without an exception (KILLED: stopped, resumable)."""

    @classmethod
    def start(cls, tracking: TrackingSection, workdir: Path, run_name: str, recipe: Any = None,
              tags: dict | None = None, artifact_root: str | None = None, resume_run_id: str | None = None,
              parent_run_id: str | None = None) -> JobRun:
        if not tracking.enabled:
            return cls()
        experiment_id = use_experiment(workdir, tracking.experiment, artifact_root)
        if resume_run_id:            # a resumed run already holds its params and tags
            return cls(mlflow.start_run(run_id=resume_run_id).info.run_id)
        run = mlflow.start_run(experiment_id=experiment_id, run_name=tracking.run_name or run_name,
                               parent_run_id=parent_run_id, nested=bool(parent_run_id))
        if recipe is not None:
            mlflow.log_params(recipe_params(recipe))
        mlflow.set_tags(run_tags(tags or {}))
        return cls(run.info.run_id)

    def log_params(self, params: dict) -> None:
        if self.run_id:
            # A resumed run already holds these params (same values).
            with contextlib.suppress(mlflow.exceptions.MlflowException):
                mlflow.log_params({k: param_value(v) for k, v in params.items()})

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        """The finite numbers of `metrics` (others are left out)."""
        if self.run_id:
            clean = {k: float(v) for k, v in metrics.items()
                     if isinstance(v, int | float) and math.isfinite(float(v))}
            if clean:
                mlflow.log_metrics(clean, step=step)

    def log_text(self, text: str, name: str) -> None:
        if self.run_id:
            mlflow.log_text(text, name)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file, or a directory's files under `artifact_path`."""
        if self.run_id:
            if Path(path).is_dir():
                mlflow.log_artifacts(str(path), artifact_path=artifact_path)
            else:
                mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def end(self, exc: BaseException | None = None) -> None:
        """End the run: `self.status`, or for an exception FAILED / KILLED with the error as a tag."""
        if not self.run_id:
            return
        if exc is None:
            mlflow.end_run(status=self.status)
            return
        try:
            mlflow.set_tag("bert4ray.error", error_text(exc))
        finally:
            mlflow.end_run(status=end_status(exc))


@contextlib.contextmanager
def tracked_run(tracking: TrackingSection, workdir: Path, run_name: str, recipe: Any = None,
                tags: dict | None = None, **start) -> Iterator[JobRun]:
    """A job's MLflow run around the block (see the module docstring); `start`: JobRun.start's
    artifact_root, resume_run_id, parent_run_id."""
    run = JobRun.start(tracking, workdir, run_name, recipe, tags, **start)
    try:
        yield run
    except BaseException as exc:
        run.end(exc)
        raise
    run.end()


class Tracker:
    """A training run: a JobRun started once Ray is up, that logs the exported model when it ends."""

    def __init__(self, recipe, workdir: Path, artifact_root: str | None = None):
        self.recipe, self.workdir, self.artifact_root = recipe, workdir, artifact_root
        self.run = JobRun()
        if recipe.tracking.enabled:       # the DB and experiment exist before any worker could race
            use_experiment(workdir, recipe.tracking.experiment, artifact_root)

    @property
    def run_id(self) -> str | None:
        return self.run.run_id

    def start(self, run_name: str, resume_run_id: str | None = None, recipe_file: Path | None = None) -> None:
        t = self.recipe.tracking
        self.run = JobRun.start(t, self.workdir, run_name, self.recipe, artifact_root=self.artifact_root,
                                tags={"bert4ray.task": self.recipe.task.name, "bert4ray.run_id": run_name},
                                resume_run_id=resume_run_id, parent_run_id=t.parent_run_id)
        if recipe_file is not None and not resume_run_id:
            self.run.log_artifact(recipe_file)

    def log_params(self, params: dict) -> None:
        self.run.log_params(params)

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.run.log_metrics(metrics, step=step)

    def log_text_artifacts(self, files: dict[str, str], metrics: dict | None = None) -> None:
        """Small text artifacts (e.g. attributions.html) at the run's root, plus their metrics."""
        for name, text in files.items():
            self.run.log_text(text, name)
        self.run.log_metrics(metrics or {})

    def finish_success(self, model_dir: Path, metrics: dict, report) -> None:
        if not self.run_id:
            return
        if report is not None:
            mlflow.log_metrics({"data_bad_rows": report.bad})
        log_pyfunc_model(model_dir, self.recipe.tracking.registered_model)
        self.run.end()

    def finish_stopped(self) -> None:
        """Stopped at checkpoint.stop_after: left KILLED until `--resume` reopens and finishes it."""
        self.run.status = "KILLED"
        self.run.end()

    def finish_failed(self, exc: BaseException) -> None:
        self.run.end(exc)
