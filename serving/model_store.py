"""Resolve a model reference to a local model directory: a path, or an MLflow model URI
(`models:/name/version`, `models:/name@alias`, `runs:/<run_id>/<path>`), downloaded once."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


def _find_model_dir(root: Path) -> Path | None:
    if (root / "config.json").is_file():
        return root
    for config in sorted(root.rglob("config.json")):
        if (config.parent / "model.safetensors").is_file() or (config.parent / "pytorch_model.bin").is_file():
            return config.parent
    return None


def _pin_version(reference: str) -> str:
    """`models:/name@alias` and `models:/name/latest` name whichever version they point at now: pin
    them to that version, so the download cache never serves a version the alias has left."""
    if not reference.startswith("models:/"):
        return reference
    from mlflow import MlflowClient

    body = reference[len("models:/"):]
    name, sep, alias = body.partition("@")
    if sep:
        alias, _, rest = alias.partition("/")
        version = MlflowClient().get_model_version_by_alias(name, alias).version
    else:
        name, _, tail = body.partition("/")
        version, _, rest = tail.partition("/")
        if version.lower() != "latest":
            return reference
        versions = MlflowClient().search_model_versions(f"name = '{name}'")
        if not versions:
            raise ValueError(f"registered model '{name}' has no versions")
        version = max(int(v.version) for v in versions)
    return f"models:/{name}/{version}" + (f"/{rest}" if rest else "")


def resolve_model(reference: str, cache_dir: str | Path | None = None) -> Path:
    """Return a local directory holding config.json and the weights; raise FileNotFoundError or
    ValueError naming the reference when it cannot be found."""
    reference = str(reference)
    if reference.startswith(MLFLOW_SCHEMES):
        import mlflow

        cache = Path(cache_dir or os.environ.get("BERT4RAY_MODEL_CACHE", Path(tempfile.gettempdir()) / "bert4ray-models"))
        try:
            pinned = _pin_version(reference)
            dest = cache / hashlib.sha256(f"{mlflow.get_tracking_uri()}|{pinned}".encode()).hexdigest()[:16]
            if not (dest.exists() and _find_model_dir(dest)):
                dest.mkdir(parents=True, exist_ok=True)
                mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=str(dest))
        except Exception as exc:  # noqa: BLE001 - MLflow raises many types for a bad URI
            raise ValueError(f"cannot download model '{reference}' from MLflow "
                             f"({mlflow.get_tracking_uri()}): {exc}") from None
        found = _find_model_dir(dest)
        if found is None:
            raise ValueError(f"MLflow artifact '{reference}' holds no model directory (no config.json)")
        return found
    path = Path(reference).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model directory '{reference}' does not exist")
    found = _find_model_dir(path)
    if found is None:
        raise FileNotFoundError(f"'{reference}' holds no config.json: not a model directory")
    return found
