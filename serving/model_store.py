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


def resolve_model(reference: str, cache_dir: str | Path | None = None) -> Path:
    """Return a local directory holding config.json and the weights; raise FileNotFoundError or
    ValueError naming the reference when it cannot be found."""
    reference = str(reference)
    if reference.startswith(MLFLOW_SCHEMES):
        import mlflow

        cache = Path(cache_dir or os.environ.get("BERT4RAY_MODEL_CACHE", Path(tempfile.gettempdir()) / "bert4ray-models"))
        dest = cache / hashlib.sha256(
            f"{mlflow.get_tracking_uri()}|{reference}".encode()).hexdigest()[:16]
        if not (dest.exists() and _find_model_dir(dest)):
            dest.mkdir(parents=True, exist_ok=True)
            try:
                mlflow.artifacts.download_artifacts(artifact_uri=reference, dst_path=str(dest))
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
