"""MLflow tracking of a training run, all from the driver (workers send records to it).

One run per training: the flattened recipe as params, step metrics (loss parts, lr, tokens/s,
grad norm), evaluation metrics, the recipe file and the exported model as artifacts (a pyfunc
model from code holding the model directory, registered under `tracking.registered_model`), and the git
commit as a tag. The tracking URI is MLFLOW_TRACKING_URI, else `sqlite:///<workdir>/mlflow.db`
with artifacts under `<workdir>/mlartifacts`. A failed run ends FAILED with its error as a tag.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import warnings
from pathlib import Path

import mlflow
import mlflow.pyfunc

from pipelines.recipe import Recipe, flatten, to_dict


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


class Tracker:
    def __init__(self, recipe: Recipe, workdir: Path, artifact_root: str | None = None):
        self.recipe, self.enabled = recipe, recipe.tracking.enabled
        self.run_id: str | None = None
        if not self.enabled:
            return
        self.experiment_id = use_experiment(workdir, recipe.tracking.experiment, artifact_root)

    def start(self, run_name: str, resume_run_id: str | None = None, recipe_file: Path | None = None) -> None:
        if not self.enabled:
            return
        t = self.recipe.tracking
        if resume_run_id:
            run = mlflow.start_run(run_id=resume_run_id)
        else:
            run = mlflow.start_run(experiment_id=self.experiment_id, run_name=t.run_name or run_name,
                                   parent_run_id=t.parent_run_id, nested=bool(t.parent_run_id))
            mlflow.log_params(recipe_params(self.recipe))
            mlflow.set_tags(run_tags({"bert4ray.task": self.recipe.task.name, "bert4ray.run_id": run_name}))
            if recipe_file is not None:
                mlflow.log_artifact(str(recipe_file))
        self.run_id = run.info.run_id

    def log_params(self, params: dict) -> None:
        if self.enabled and self.run_id:
            # A resumed run already holds these params (same values).
            with contextlib.suppress(mlflow.exceptions.MlflowException):
                mlflow.log_params({k: str(v) for k, v in params.items()})

    def log_metrics(self, metrics: dict, step: int) -> None:
        if self.enabled and self.run_id:
            clean = {k: float(v) for k, v in metrics.items()
                     if isinstance(v, int | float) and not math.isnan(float(v))}
            if clean:
                mlflow.log_metrics(clean, step=step)

    def log_text_artifacts(self, files: dict[str, str], metrics: dict | None = None) -> None:
        """Small text artifacts (e.g. attributions.html) at the run's root, plus their metrics."""
        if not (self.enabled and self.run_id):
            return
        for name, text in files.items():
            mlflow.log_text(text, name)
        if metrics:
            mlflow.log_metrics({k: float(v) for k, v in metrics.items()})

    def finish_success(self, model_dir: Path, metrics: dict, report) -> None:
        if not (self.enabled and self.run_id):
            return
        if report is not None:
            mlflow.log_metrics({"data_bad_rows": report.bad})
        log_pyfunc_model(model_dir, self.recipe.tracking.registered_model)
        mlflow.end_run(status="FINISHED")

    def finish_stopped(self) -> None:
        """Stopped at checkpoint.stop_after: left KILLED until `--resume` reopens and finishes it."""
        if self.enabled and self.run_id:
            mlflow.end_run(status="KILLED")

    def finish_failed(self, exc: BaseException) -> None:
        if not (self.enabled and self.run_id):
            return
        try:
            mlflow.set_tag("bert4ray.error", f"{type(exc).__name__}: {exc}"[:5000])
        finally:
            mlflow.end_run(status="FAILED")
