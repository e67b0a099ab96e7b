"""Everything about a serve command's input that can be checked before Ray starts.

A wrong path or an index of another model would otherwise surface as a replica that crashes and
is retried inside the cluster; here it is one line and exit code 2 before anything starts.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from components import objectstore
from serving.model_store import MLFLOW_SCHEMES, resolve_model

BUILDER = "serving.app:build_app"


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


def is_local(reference: str) -> bool:
    return not str(reference).startswith(MLFLOW_SCHEMES) and "://" not in str(reference)


def check_app_args(args: dict) -> dict:
    """Validate the builder's arguments; local model and index paths must exist, be what they
    claim, and are made absolute (replicas do not share this process's working directory). Each
    capability's arguments are checked as it declares (serving/registry.py)."""
    from serving.app import AppArgs
    from serving.registry import app_args, enabling_args

    try:
        typed = AppArgs(**args)
    except ValidationError as exc:
        raise InputError(_first_error(exc, "application args")) from None
    given = enabling_args()
    if not any(getattr(typed, name) for name in given):
        *first, last = [_flag(name) for name in given]
        raise InputError(f"nothing to serve: give {', '.join(first) + ' or ' if first else ''}{last} "
                         f"(or {given[0]}: ... in the config's args)")
    out = dict(args)
    for arg in app_args():
        value = getattr(typed, arg.name)
        if not value:
            continue
        if arg.requires and not getattr(typed, arg.requires):
            raise InputError(f"{arg.requires_why}: give {_flag(arg.requires)} as well")
        out[arg.name] = arg.check(value, out) if arg.check else _check_model(arg.name, value)
    return out


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_model(key: str, value: str) -> str:
    if is_local(value):
        try:
            return str(resolve_model(value).resolve())
        except (FileNotFoundError, ValueError) as exc:
            raise InputError(f"{key.replace('_', '-')}: {exc}") from None
    if objectstore.is_remote(value) and not str(value).startswith(MLFLOW_SCHEMES):
        _check_bucket_model(key, value)
    return value


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


def _carry_api_key(app: dict) -> None:
    """The builder runs inside the cluster, so the key this process holds travels in the
    application's runtime_env (never through the config file)."""
    from serving.app import AppArgs

    name = (app.get("args") or {}).get("api_key_env") or AppArgs.model_fields["api_key_env"].default
    if os.environ.get(name):
        env = app.setdefault("runtime_env", {}).setdefault("env_vars", {})
        env.setdefault(name, os.environ[name])


def _carry_capability_modules(app: dict) -> None:
    """Capabilities added through BERT4RAY_CAPABILITIES are imported where the app is built and
    where its replicas run, on whatever node: the variable goes with the application."""
    from serving.registry import PLUGINS_ENV

    if os.environ.get(PLUGINS_ENV):
        env = app.setdefault("runtime_env", {}).setdefault("env_vars", {})
        env.setdefault(PLUGINS_ENV, os.environ[PLUGINS_ENV])


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
            _carry_capability_modules(app)
    try:
        return ServeDeploySchema.model_validate(config)
    except ValidationError as exc:
        raise InputError(_first_error(exc, f"Serve config '{path or '(flags)'}'")) from None
