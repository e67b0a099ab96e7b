"""Training tasks: what a task supplies to the one training engine, and the registry by name.

A task is one file in this package defining a `Task` subclass decorated with `@register`:

    @register
    class MyTask(Task):
        name = "mytask"
        @dataclass
        class Options:            # the recipe's `task:` keys besides `name`
            weight: float = 1.0
        def check_row(self, row): ...      # None, or why the row is unusable
        def encode(self, row, tokenizer, max_length): ...   # row -> flat dict of ints / int lists
        def collate(self, rows, tokenizer, generator): ...  # list of encoded rows -> tensors
        def loss_fn(self, model, batch, inputs_embeds): ... # -> {"loss": total, part: value, ...}
        def evaluate(self, model, batches, tokenizer): ...  # -> {"metric": float}

Modules here are imported on first lookup, so a new task needs no other edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

_REGISTRY: dict[str, type[Task]] = {}


class Task:
    """Base class: the engine calls these hooks; rows are JSON objects from the data files."""

    name: ClassVar[str] = ""
    mask_mode: ClassVar[str] = "bidirectional"
    generates: ClassVar[bool] = False
    """The trained model writes text (decoding, `bert4ray tune` decoding searches, MGS, BLEU / F1)."""
    causal: ClassVar[bool] = False
    """It writes left to right after a history (a dialogue LM: `bert4ray chat`), not seq2seq (UniLM)."""

    @dataclass
    class Options:
        pass

    def __init__(self, options: Any = None, meta: dict | None = None):
        self.options = options if options is not None else self.Options()
        self.meta: dict = dict(meta or {})
        """What `prepare` learnt from the data on the driver (e.g. the label names); sent to workers."""

    # --- driver side -------------------------------------------------------------------------
    def check_row(self, row: dict) -> str | None:
        """None if the row is usable, else a short reason ("missing field 'text'")."""
        raise NotImplementedError

    def texts(self, row: dict) -> list[str]:
        """The row's texts: used for the vocabulary and (the first) for the hash-based split."""
        raise NotImplementedError

    def prepare(self, dataset) -> None:
        """Inspect the checked training rows (a Ray Dataset of {"record": json}) and fill self.meta."""

    def model_overrides(self) -> dict:
        """ModelConfig keys this task needs (e.g. num_labels)."""
        return {}

    # --- Ray Data (tokenization) --------------------------------------------------------------
    def encode(self, row: dict, tokenizer, max_length: int) -> dict[str, Any]:
        raise NotImplementedError

    # --- workers -----------------------------------------------------------------------------
    def collate(self, rows: list[dict], tokenizer, generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss_fn(self, model, batch: dict, inputs_embeds: torch.Tensor | None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def evaluate(self, model, batches: Iterable[dict], tokenizer) -> dict[str, float]:
        raise NotImplementedError

    def count_tokens(self, batch: dict) -> int:
        return int(batch["attention_mask"].sum())

    # --- driver side, after the export ----------------------------------------------------------
    report_rows: ClassVar[int] = 0
    """How many validation rows `export_report` wants (0 = no report)."""

    def export_report(self, model_dir, rows: list[dict]) -> tuple[dict[str, float], dict[str, str]]:
        """(metrics, {artifact file name: text}) computed on the exported model from a sample of
        validation rows; logged to the run."""
        return {}, {}


def register(cls: type[Task]) -> type[Task]:
    if not cls.name:
        raise ValueError(f"task class {cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"task name '{cls.name}' is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


def task_names() -> list[str]:
    _discover()
    return sorted(_REGISTRY)


def get_task(name: str) -> type[Task]:
    """The Task class registered under `name` (KeyError if none)."""
    if name not in _REGISTRY:
        _discover()
    return _REGISTRY[name]


def tasks_where(attribute: str) -> list[str]:
    """Names of the tasks whose class attribute `attribute` is true (e.g. "generates")."""
    return [name for name in task_names() if getattr(get_task(name), attribute)]


def task_is(name: str | None, attribute: str) -> bool:
    """Whether task `name` has `attribute` ("generates", "causal"); False for an unknown task."""
    try:
        return bool(getattr(get_task(name), attribute)) if name else False
    except KeyError:
        return False


def check_text_field(row: dict, key: str) -> str | None:
    """Shared row check: `key` present, a string, not blank."""
    if key not in row:
        return f"missing field '{key}'"
    value = row[key]
    if not isinstance(value, str):
        return f"field '{key}' must be a string, got {type(value).__name__}"
    if not value.strip():
        return f"field '{key}' is empty"
    return None
