"""Everything about a serve command's input that can be checked before Ray starts.

A wrong path or an index of another model would otherwise surface as a replica that crashes and
is retried inside the cluster; here it is one line and exit code 2 before anything starts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from components import objectstore
from serving.model_store import MLFLOW_SCHEMES, resolve_model

BUILDER = "serving.app:build_app"
MODEL_ARGS = ("model", "chat_model", "attribution_model", "parser_model")


class InputError(ValueError):
    """Input that is wrong before anything starts: one line, exit code 2."""


def _first_error(exc: ValidationError, where: str) -> str:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
    return f"{where}: {field}: {err.get('msg', 'invalid')}"


def _load(path: str | None) -> dict:
    if path is None:
        return {"applications": [{"name": "bert4ray", "route_prefix": "/", "import_path": BUILDER, "args": {}}]}
    if not Path(path).is_file():
        raise InputError(f"Serve config '{path}' does not exist")
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"Serve config '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(config, dict) or not config.get("applications"):
        raise InputError(f"Serve config '{path}' has no applications")
    return config


def _is_local(reference: str) -> bool:
    return not str(reference).startswith(MLFLOW_SCHEMES) and "://" not in str(reference)


def check_app_args(args: dict) -> dict:
    """Validate the builder's arguments; local model and index paths must exist, be what they
    claim, and are made absolute (replicas do not share this process's working directory)."""
    from serving.app import AppArgs

    try:
        typed = AppArgs(**args)
    except ValidationError as exc:
        raise InputError(_first_error(exc, "application args")) from None
    if not any(getattr(typed, key) for key in MODEL_ARGS):
        raise InputError("nothing to serve: give --model (SimBERT), --chat-model, --attribution-model "
                         "or --parser-model (or model: ... in the config's args)")
    out = dict(args)
    for key in MODEL_ARGS:
        value = getattr(typed, key)
        if value and _is_local(value):
            try:
                out[key] = str(resolve_model(value).resolve())
            except (FileNotFoundError, ValueError) as exc:
                raise InputError(f"{key.replace('_', '-')}: {exc}") from None
        elif value and objectstore.is_remote(value) and not str(value).startswith(MLFLOW_SCHEMES):
            _check_bucket_model(key, value)
    if typed.index:
        if not typed.model:
            raise InputError("an index needs the model that built it: give --model as well")
        out["index"] = _check_index(typed.index, out["model"])
    return out


def _check_bucket_model(key: str, uri: str) -> None:
    """A bucket model is checked here (scheme, bucket, credentials, config.json: listing only);
    the replicas download it into their node's cache."""
    from components import locations
    if not any(uri.startswith(p) for p in locations.registered_schemes()):
        raise InputError(f"{key.replace('_', '-')}: model '{uri}': unknown scheme "
                         f"(use a directory, models:/, runs:/ or one of {', '.join(objectstore.SCHEMES)})")
    try:
        objectstore.pin_model(uri)
    except objectstore.LocationError as exc:
        raise InputError(f"{key.replace('_', '-')}: {exc}") from None


def _check_index(index: str, model: str) -> str:
    from components.weights import model_fingerprint

    meta = Path(index) / "index.json"
    if not meta.is_file():
        raise InputError(f"index: '{index}' is not an index directory (no index.json)")
    try:
        built_with = str(json.loads(meta.read_text(encoding="utf-8"))["model_fingerprint"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"index: {meta}: damaged index metadata ({exc})") from None
    if _is_local(model) and built_with != (ours := model_fingerprint(model)):
        raise InputError(f"index: '{index}' was built with another model (fingerprint {built_with[:12]}, "
                         f"the model is {ours[:12]}); rebuild it with `bert4ray index`")
    return str(Path(index).resolve())


def _carry_api_key(app: dict) -> None:
    """The builder runs inside the cluster, so the key this process holds travels in the
    application's runtime_env (never through the config file)."""
    from serving.app import AppArgs

    name = (app.get("args") or {}).get("api_key_env") or AppArgs.model_fields["api_key_env"].default
    if os.environ.get(name):
        env = app.setdefault("runtime_env", {}).setdefault("env_vars", {})
        env.setdefault(name, os.environ[name])


def prepare_config(path: str | None, flags: dict, host: str | None = None, port: int | None = None):
    """The Serve config to deploy (Ray Serve's own ServeDeploySchema): the file's, or one built from
    the flags; flags override the first application's args and the HTTP options."""
    from ray.serve.schema import ServeDeploySchema

    config = _load(path)
    apps = config["applications"]
    apps[0]["args"] = {**(apps[0].get("args") or {}), **{k: v for k, v in flags.items() if v}}
    http = config.setdefault("http_options", {}) or {}
    config["http_options"] = {**http, "host": host or http.get("host") or "127.0.0.1",
                              "port": int(port or http.get("port") or 8000)}
    for app in apps:
        if app.get("import_path") == BUILDER:
            app["args"] = check_app_args(app.get("args") or {})
            _carry_api_key(app)
    try:
        return ServeDeploySchema.model_validate(config)
    except ValidationError as exc:
        raise InputError(_first_error(exc, f"Serve config '{path or '(flags)'}'")) from None
