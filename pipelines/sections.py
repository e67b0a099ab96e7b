"""Typed recipe sections: YAML (a file, `env:NAME` or a dict) + `--set a.b=c` overrides -> dataclasses.

    recipe = load_sections(MyRecipe, "my.yaml", ["optim.lr=1e-3"], data=overlay_dict)

Every recipe-driven job (`train`, `tune`, `mgs`, `probe`) declares its recipe as a dataclass of
section dataclasses and loads it here, so all of them check the same way:
- an unknown key names the closest valid one, a value of the wrong type names the key and the type;
- a field declared with `choice(...)` or `bounded(...)` has its value checked where it is read,
  with the full key in the message (the closest valid value for a choice);
- a section that defines `check()` (or validates in `__post_init__`) is checked as soon as it is
  built; a ValueError it raises comes back as "recipe section 'NAME': ..." (a RecipeError passes as
  it is), so the recipe's own `check()` does the checks across sections, with full key names.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.cli import UserError


class RecipeError(UserError, ValueError):
    """The recipe (file, overlay or override) is wrong; the message names the key. An input error:
    the command line prints it as one line and exits 2."""


def recipe_dataclass(cls):
    """`@dataclass` for a recipe: a field annotated with a section class and given no default
    defaults to a fresh section (as the builder builds every section, given or not)."""
    namespace = vars(sys.modules[cls.__module__])
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if name in cls.__dict__:
            continue
        try:
            tp = eval(annotation, namespace) if isinstance(annotation, str) else annotation  # noqa: S307
        except NameError:
            continue
        if dataclasses.is_dataclass(tp):
            setattr(cls, name, field(default_factory=tp))
    return dataclass(cls)


@dataclass
class TrackingSection:
    """The MLflow section every job shares; `tracking_field` gives a job its own experiment name."""
    enabled: bool = True
    experiment: str = "bert4ray"
    run_name: str | None = None


def tracking_field(experiment: str, cls: type = TrackingSection):
    """A recipe's `tracking` field whose default experiment is `experiment` (a YAML tracking
    section without `experiment` keeps it too: sections are built over their field's default)."""
    return field(default_factory=lambda: cls(experiment=experiment))


# --- value checks ---------------------------------------------------------------------------------
def suggest(value: Any, names, template: str = " (did you mean '{}'?)") -> str:
    """The closest of `names` to `value` in `template`, or "" when none is close."""
    close = difflib.get_close_matches(str(value), [str(n) for n in names if n is not None], n=1)
    return template.format(close[0]) if close else ""


def check_choice(value: Any, choices, key: str) -> None:
    """`value` is one of `choices`, else a RecipeError naming `key`, the closest choice and all."""
    if value not in choices:
        raise RecipeError(f"recipe key '{key}' has value {value!r}{suggest(value, choices)}; valid: "
                          f"{', '.join(str(c) for c in choices)}")


def check_local_workdir(workdir: str, outputs_key: str) -> None:
    """The job keeps its workdir (MLflow's store, Ray's state) on local disk: a bucket there is a
    RecipeError that says where a bucket may go instead."""
    from components.objectstore import is_remote
    if is_remote(workdir):
        raise RecipeError(f"recipe key 'workdir': '{workdir}' is a bucket; this job keeps its workdir on local "
                          f"disk (MLflow's store, Ray's state): give the bucket as {outputs_key} instead")


_FIRST = object()


def choice(*values, default: Any = _FIRST):
    """A field that takes one of `values`; its default is the first unless `default` says otherwise."""
    return field(default=values[0] if default is _FIRST else default, metadata={"choices": values})


def bounded(default: float, *, at_least: float | None = None, above: float | None = None):
    """A number field that must be >= `at_least` or > `above`."""
    return field(default=default, metadata={"at_least": at_least, "above": above})


def _check_field(f: dataclasses.Field, value: Any, key: str) -> None:
    """The constraints `choice` / `bounded` put on a field."""
    meta = f.metadata
    if "choices" in meta:
        check_choice(value, meta["choices"], key)
    for bound, sign, ok in ((meta.get("at_least"), ">=", lambda v, b: v >= b), (meta.get("above"), ">", lambda v, b: v > b)):
        if bound is not None and not ok(value, bound):
            raise RecipeError(f"recipe key '{key}' must be {sign} {bound}, got {value!r}")


def get_value(recipe: Any, key: str) -> Any:
    """The value at a dotted key; a section's `options` (the task's) are looked into as well."""
    node: Any = recipe
    for part in key.split("."):
        if not hasattr(node, part) and hasattr(node, "options"):
            node = node.options
        node = getattr(node, part)
    return node


# --- loading --------------------------------------------------------------------------------------
class _Raw(str):
    """A value given on the command line: parsed according to the field it lands in."""


ENV_PREFIX = "env:"
"""`load_sections(cls, "env:NAME")` reads the recipe's YAML text from the environment variable NAME
(how `bert4ray submit` hands a recipe to a Ray job without uploading a file)."""


def _read_source(path: str | Path) -> tuple[str, str]:
    """(YAML text, name for messages) of a recipe file or an `env:NAME` variable."""
    if isinstance(path, str) and path.startswith(ENV_PREFIX):
        name = path[len(ENV_PREFIX):]
        if not name:
            raise RecipeError(f"recipe '{path}' names no environment variable (use env:NAME)")
        if name not in os.environ:
            raise RecipeError(f"recipe environment variable '{name}' is not set")
        return os.environ[name], f"recipe in ${name}"
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file '{path}' does not exist")
    return path.read_text(encoding="utf-8"), str(path)


def _read_mapping(text: str, where: str, not_a_mapping: str) -> dict:
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise RecipeError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: {not_a_mapping}")
    return raw


def read_overlays(paths: list[str]) -> dict:
    """YAML files merged in order (`--overlay`), to be merged over a recipe."""
    merged: dict = {}
    for item in paths:
        if not Path(item).is_file():
            raise FileNotFoundError(f"overlay file '{item}' does not exist")
        text = Path(item).read_text(encoding="utf-8")
        merged = merge(merged, _read_mapping(text, item, "an overlay must be a mapping of recipe sections"))
    return merged


def merge(a: dict, b: dict) -> dict:
    """`b` over `a`, section by section."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_path(raw: dict, keys: list[str], value: Any) -> None:
    node = raw
    for i, k in enumerate(keys[:-1]):
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        elif not isinstance(nxt, dict):
            raise RecipeError(f"override key '{'.'.join(keys[:i + 1])}' is a value, not a section")
        node = nxt
    node[keys[-1]] = value


def load_sections(cls, path: str | Path | None = None, overrides: list[str] | None = None, data: dict | None = None):
    """The dataclass `cls` from a YAML recipe (a file or `env:NAME`), with `data` (e.g. overlays)
    merged over it and `key=value` overrides applied last; every key, type and section checked."""
    raw: dict = {}
    if path is not None:
        text, where = _read_source(path)
        raw = _read_mapping(text, where, "a recipe must be a mapping of sections")
    if data:
        raw = merge(raw, copy.deepcopy(data))
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"override '{item}' must look like section.key=value")
        _set_path(raw, key.strip().split("."), _Raw(value))
    return build(cls, raw, "")


def build(cls, raw: Any, prefix: str, base: Any = None):
    """Turn a dict into the dataclass `cls` (over the instance `base`, when given), checking every
    key and value type, then the section itself. A class with `build_section(raw, prefix)` builds
    itself; `section_types()` names the classes of fields typed `Any` (imported only when built)."""
    where = prefix.rstrip(".") or "recipe"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"'{where}' must be a section (a mapping), got {raw!r}")
    if hasattr(cls, "build_section"):
        return cls.build_section(raw, prefix)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            hint = suggest(key, fields, f"; did you mean '{prefix}{{}}'?") or f"; valid keys: {', '.join(fields)}"
            raise RecipeError(f"unknown recipe key '{prefix}{key}'{hint}")
    hints = {**typing.get_type_hints(cls), **(cls.section_types() if hasattr(cls, "section_types") else {})}
    kwargs = {}
    for name, f in fields.items():
        tp, key = hints[name], prefix + name
        if dataclasses.is_dataclass(tp):       # a section: built even when absent (its own checks run)
            inner = getattr(base, name, None)
            if inner is None and f.default_factory is not dataclasses.MISSING:
                inner = f.default_factory()
            kwargs[name] = build(tp, raw.get(name), key + ".", inner if dataclasses.is_dataclass(inner) else None)
        elif name in raw:
            kwargs[name] = _coerce(raw[name], tp, key)
            _check_field(f, kwargs[name], key)
    return _checked(lambda: dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs), where)


def _checked(make, where: str):
    """Build a section and run its `check()`; its ValueErrors name the section."""
    try:
        obj = make()
        if hasattr(obj, "check"):
            obj.check()
    except RecipeError:
        raise
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"recipe section '{where}': {exc}") from None
    return obj


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _parsed(value: Any) -> Any:
    """Command-line strings inside free-form values (mappings, `Any`) parsed as YAML."""
    if isinstance(value, _Raw):
        return yaml.safe_load(value)
    if isinstance(value, dict):
        return {k: _parsed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_parsed(v) for v in value]
    return value


def _coerce(value: Any, tp, key: str) -> Any:
    """Check (and for command-line strings, parse) `value` against the annotation `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return _parsed(value)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, key)
    if origin is list:
        if isinstance(value, _Raw):
            parsed = yaml.safe_load(value)
            value = parsed if isinstance(parsed, list) else [v.strip() for v in value.split(",") if v.strip()]
            value = [_Raw(v) if isinstance(v, str) else v for v in value]
        elif isinstance(value, str | int | float):
            value = [value]       # a single file or number where a list is expected
        if not isinstance(value, list):
            raise RecipeError(f"recipe key '{key}' must be a list, got {value!r}")
        return [_coerce(v, args[0] if args else Any, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        value = _parsed(value)
        if not isinstance(value, dict):
            raise RecipeError(f"recipe key '{key}' must be a mapping, got {value!r}")
        return value
    if isinstance(value, _Raw):
        if tp is str:
            return str(value)
        value = yaml.safe_load(value)
    return _coerce_scalar(value, tp, key)


def _coerce_union(value: Any, args: tuple, key: str) -> Any:
    if type(None) in args and (value is None or (
            isinstance(value, _Raw) and value.strip().lower() in ("none", "null", "~", ""))):
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, key)
        except RecipeError as exc:
            errors.append(exc)
    raise errors[0]


def _coerce_scalar(value: Any, tp, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)     # 1e4 in YAML is a float
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):   # PyYAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise RecipeError(f"recipe key '{key}' has an unsupported type {tp!r}")
    raise RecipeError(f"recipe key '{key}' must be {_type_name(tp)}, got {value!r}")


# --- writing --------------------------------------------------------------------------------------
def to_dict(recipe: Any) -> dict:
    """The recipe as plain data; a section with `to_raw()` (the task's) gives its own."""
    def convert(obj):
        if hasattr(obj, "to_raw"):
            return convert(obj.to_raw())
        if dataclasses.is_dataclass(obj):
            return {f.name: convert(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, list):
            return [convert(v) for v in obj]
        if isinstance(obj, dict):
            return {k: convert(v) for k, v in obj.items()}
        return obj
    return convert(recipe)


def to_yaml(recipe: Any) -> str:
    """The recipe as YAML text that loads back into the same recipe."""
    return yaml.safe_dump(to_dict(recipe), sort_keys=False, allow_unicode=True)


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3} (MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
