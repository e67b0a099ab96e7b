"""Resolve a model reference to a local model directory: a path, or an MLflow model URI
(`models:/name/version`, `models:/name@alias`, `runs:/<run_id>/<path>`), downloaded once.

The resolver and its download cache are `components.locations`; this module only registers
MLflow's schemes with it (pipelines/model_store.py does the same for the command line).
"""

from __future__ import annotations

from pathlib import Path

from components import locations

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


def _tracking_uri() -> str:
    import mlflow
    return mlflow.get_tracking_uri()


def _pin(reference: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient()

    def newest(name: str) -> str | None:
        versions = client.search_model_versions(f"name = '{name}'")
        return str(max(int(v.version) for v in versions)) if versions else None

    try:
        return locations.pin_registry_uri(
            reference, lambda name, alias: client.get_model_version_by_alias(name, alias).version, newest)
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types for a bad URI
        raise RuntimeError(f"{exc} (MLflow at {_tracking_uri()})") from None


def _fetch(reference: str, dest: Path) -> None:
    import mlflow
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=reference, dst_path=str(dest))
    except Exception as exc:  # noqa: BLE001 - as above
        raise RuntimeError(f"{exc} (MLflow at {_tracking_uri()})") from None


HANDLER = locations.Handler(fetch_fn=_fetch, pin_fn=_pin, scope_fn=_tracking_uri)


def register() -> None:
    """Route MLflow's URIs through components.locations (idempotent)."""
    for prefix in MLFLOW_SCHEMES:
        locations.register_scheme(prefix, HANDLER)


def resolve_model(reference: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local model directory for a path or a registered URI (see components.locations)."""
    register()
    return locations.resolve_model(reference, cache_dir=cache_dir)


def resolve_index(reference: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local index directory for a path, a bucket URI or an MLflow artifact URI (see
    components.locations)."""
    register()
    return locations.resolve_index(reference, cache_dir=cache_dir)
