"""Where a model lives: a reference (a local directory, or a URI of a registered scheme) resolved to
a local model directory.

    from components.locations import register_scheme, resolve_model
    register_scheme("models:/", handler)          # pipelines and serving register MLflow's schemes
    resolve_model("models:/simbert@champion")     # -> Path of a cached, complete download
    resolve_model("runs/quickstart/model")        # -> the directory itself
    resolve_index("s3://bucket/indexes/faq")      # -> Path of a cached, complete index download

A scheme handler has `fetch(reference, dest)`, which writes the model's files under `dest`; it
may have `pin(reference) -> str`, which names exactly what `reference` points at now (an alias
pinned to its version, an object with its version or ETag: what `fetch` is then given), and
`scope() -> str`, what else tells two equal references apart (MLflow's tracking URI, an endpoint).
Downloads are cached under `BERT4RAY_MODEL_CACHE` (default: the temp dir's `bert4ray-models`) by a
hash of scope and pinned reference, and
land atomically: fetched into a temporary sibling and renamed into place only once they hold a
model directory, so an interrupted or failed download is never taken for a model. This module
knows only the object stores that pyarrow reads (`s3://`, `gs://`, `abfs://`, `hdfs://`: see
components.objectstore, registered below); MLflow's schemes are registered by pipelines and serving
(components never imports MLflow or Ray).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")          # two letters at least: not a Windows drive


class SchemeHandler(Protocol):
    def fetch(self, reference: str, dest: Path) -> None: ...


@dataclass(frozen=True)
class Handler:
    """A handler from functions: `fetch(reference, dest)`, optionally `pin(reference)` and `scope()`."""
    fetch_fn: Callable[[str, Path], None]
    pin_fn: Callable[[str], str] | None = None
    scope_fn: Callable[[], str] | None = None

    def fetch(self, reference: str, dest: Path) -> None:
        self.fetch_fn(reference, dest)

    def pin(self, reference: str) -> str:
        return self.pin_fn(reference) if self.pin_fn else reference

    def scope(self) -> str:
        return self.scope_fn() if self.scope_fn else ""


_HANDLERS: dict[str, SchemeHandler] = {}


def register_scheme(prefix: str, handler: SchemeHandler) -> None:
    """Resolve references starting with `prefix` (e.g. "models:/", "s3://") through `handler`;
    registering a prefix again replaces its handler."""
    if not _URI.match(prefix):
        raise ValueError(f"scheme prefix '{prefix}' must look like 'name:/' or 'name://'")
    _HANDLERS[prefix] = handler


def registered_schemes() -> list[str]:
    return sorted(_HANDLERS)


def is_uri(reference: str | Path) -> bool:
    """True for a reference with a URI scheme (registered or not), False for a local path."""
    return isinstance(reference, str) and bool(_URI.match(reference))


def default_cache_dir() -> Path:
    return Path(os.environ.get("BERT4RAY_MODEL_CACHE") or Path(tempfile.gettempdir()) / "bert4ray-models")


def find_model_dir(root: Path) -> Path | None:
    """`root` if it holds config.json, else the first directory below it that holds config.json and
    weights (a pyfunc model keeps the directory under artifacts/), else None."""
    if (root / "config.json").is_file():
        return root
    for config in sorted(root.rglob("config.json")):
        if any((config.parent / w).is_file() for w in WEIGHT_FILES):
            return config.parent
    return None


def find_index_dir(root: Path) -> Path | None:
    """`root` if it holds an index (index.json), else None."""
    return root if (root / "index.json").is_file() else None


def resolve_model(reference: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local model directory (config.json and weights) for `reference`. Raises
    FileNotFoundError for a missing or non-model local path and ValueError for a URI that cannot
    be fetched; both name the reference."""
    text = str(reference)
    if is_uri(text):
        return _cached(text, _handler(text, "model"), Path(cache_dir) if cache_dir else default_cache_dir(),
                       find_model_dir, "model")
    path = Path(text).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model directory '{text}' does not exist")
    found = find_model_dir(path)
    if found is None:
        raise FileNotFoundError(f"'{text}' holds no config.json: not a model directory")
    return found


def resolve_index(reference: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A local index directory (index.json, index.faiss) for a path, a bucket URI or a registered
    URI (an index logged as a run's artifact), downloaded once into the same cache as models.
    Errors as resolve_model's."""
    text = str(reference)
    if not is_uri(text):
        path = Path(text).expanduser()
        if find_index_dir(path) is None:
            raise FileNotFoundError(f"'{text}' is not an index directory (no index.json)")
        return path
    from components import objectstore
    handler = _INDEX_HANDLER if objectstore.is_remote(text) and text.startswith(objectstore.SCHEMES) \
        else _handler(text, "index")
    return _cached(text, handler, Path(cache_dir) if cache_dir else default_cache_dir(), find_index_dir, "index")


def _handler(reference: str, what: str) -> SchemeHandler:
    handler = next((_HANDLERS[p] for p in sorted(_HANDLERS, key=len, reverse=True) if reference.startswith(p)), None)
    if handler is None:
        known = ", ".join(registered_schemes()) or "none"
        raise ValueError(f"{what} '{reference}': no handler for this scheme (registered: {known})")
    return handler


def _cached(reference: str, handler: SchemeHandler, cache: Path, find: Callable[[Path], Path | None],
            what: str) -> Path:
    try:
        pinned = handler.pin(reference) if hasattr(handler, "pin") else reference
        scope = handler.scope() if hasattr(handler, "scope") else ""
    except Exception as exc:  # noqa: BLE001 - a handler's client raises its own error types
        raise ValueError(f"cannot resolve {what} '{reference}': {exc}") from None
    # Models and indexes share the cache; the kind is part of the key.
    key = f"{scope}|{pinned}" if what == "model" else f"{what}|{scope}|{pinned}"
    dest = cache / ("m-" + hashlib.sha256(key.encode()).hexdigest()[:24])
    if dest.is_dir():                 # only complete downloads are ever renamed to this name
        found = find(dest)
        if found is not None:
            return found
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=cache))
    try:
        try:
            handler.fetch(pinned, tmp)
        except Exception as exc:  # noqa: BLE001 - as above
            raise ValueError(f"cannot download {what} '{reference}': {exc}") from None
        if find(tmp) is None:
            raise ValueError(f"{what} '{reference}' holds no {what} directory "
                             f"({'no config.json' if what == 'model' else 'no index.json'})")
        try:
            os.rename(tmp, dest)
        except OSError:               # another process finished the same download first: use theirs
            if not (dest.is_dir() and find(dest)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return find(dest)


def pin_registry_uri(reference: str, version_of_alias: Callable[[str, str], str],
                     newest_version: Callable[[str], str | None]) -> str:
    """`models:/name@alias[/path]` and `models:/name/latest[/path]` pinned to the version they name
    now, as `models:/name/<version>[/path]` (other references unchanged), so a cache entry never
    serves a version the alias has left. The registry calls are given by the caller (MLflow's
    client in pipelines and serving); `newest_version` returns None for a model without versions."""
    if not reference.startswith("models:/"):
        return reference
    body = reference[len("models:/"):]
    name, sep, alias = body.partition("@")
    if sep:
        alias, _, rest = alias.partition("/")
        version = str(version_of_alias(name, alias))
    else:
        name, _, tail = body.partition("/")
        version, _, rest = tail.partition("/")
        if version.lower() != "latest":
            return reference
        version = newest_version(name)
        if version is None:
            raise ValueError(f"registered model '{name}' has no versions")
    return f"models:/{name}/{version}" + (f"/{rest}" if rest else "")


def _register_object_stores() -> None:
    # pyarrow is a components dependency, so bucket URIs resolve wherever components is imported.
    from components import objectstore
    global _INDEX_HANDLER
    handler = Handler(fetch_fn=objectstore.fetch_directory, pin_fn=objectstore.pin_model,
                      scope_fn=objectstore.endpoint_scope)
    for prefix in objectstore.SCHEMES:
        register_scheme(prefix, handler)
    _INDEX_HANDLER = Handler(fetch_fn=objectstore.fetch_directory, pin_fn=objectstore.pin_index,
                             scope_fn=objectstore.endpoint_scope)


_INDEX_HANDLER: SchemeHandler
_register_object_stores()
