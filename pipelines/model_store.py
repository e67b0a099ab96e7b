"""Model references for every command that takes a model (`init_from`, `index`, `chat`,
`attribute`, `tune`, `mgs`): a directory, or an MLflow model URI (`models:/name/version`,
`models:/name@alias`, `runs:/<run_id>/<path>`), downloaded once into a cache.

The resolver and its cache are `components.locations`; this module registers MLflow's schemes
with it (serving/model_store.py does the same for the Serve application). URIs are looked up in
the tracking store given to `resolve_model` (train, tune and mgs give their workdir's), else
MLFLOW_TRACKING_URI, else MLflow's default.
"""

from __future__ import annotations

import contextvars
from pathlib import Path

from components import locations

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
_STORE: contextvars.ContextVar[str | None] = contextvars.ContextVar("bert4ray_mlflow_store", default=None)


def _tracking_uri() -> str:
    import mlflow
    return _STORE.get() or mlflow.get_tracking_uri()


def _pin(reference: str) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=_tracking_uri())

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
        mlflow.artifacts.download_artifacts(artifact_uri=reference, dst_path=str(dest), tracking_uri=_tracking_uri(),
                                            registry_uri=_STORE.get())
    except Exception as exc:  # noqa: BLE001 - as above
        raise RuntimeError(f"{exc} (MLflow at {_tracking_uri()})") from None


HANDLER = locations.Handler(fetch_fn=_fetch, pin_fn=_pin, scope_fn=_tracking_uri)


def register() -> None:
    """Route MLflow's URIs through components.locations (idempotent)."""
    for prefix in MLFLOW_SCHEMES:
        locations.register_scheme(prefix, HANDLER)


def resolve_model(reference: str | Path, cache_dir: str | Path | None = None,
                  tracking_uri: str | None = None) -> Path:
    """A local model directory for a path or a registered URI (see components.locations);
    `tracking_uri`: the MLflow store that URIs name (default: MLflow's current one)."""
    register()
    token = _STORE.set(tracking_uri)
    try:
        return locations.resolve_model(reference, cache_dir=cache_dir)
    finally:
        _STORE.reset(token)


def for_actors(reference: str | Path, model_dir: Path) -> str:
    """What Ray actors on any node should load for `reference`, resolved here to `model_dir`: a
    bucket model by its URI (each node fetches it once into its own cache), anything else as this
    directory (MLflow's store may be a file only this machine sees), which other nodes must then
    see at the same path."""
    from components import objectstore
    return str(reference) if objectstore.is_remote(str(reference)) else str(model_dir)
