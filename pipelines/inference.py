"""Batch inference on Ray Data actors, shared by `bert4ray predict` and `bert4ray index`.

    ds.map_batches(Predictor, fn_constructor_args=("embed", model_dir),
                   fn_constructor_kwargs={"batch_size": 64}, batch_format="pyarrow", ...)

A `Predictor` loads its model once. Each call takes a block (a pyarrow table) and returns the same
rows with the kind's output columns added and `_error` (null, or why the row was not predicted)
and `_seconds` (this call's time spread over its rows, so a sum over rows is actor time). Inside
a block the valid rows are sorted by length and run in passes of `batch_size` rows, so a pass
pads little; results go back to the rows' own order.

The value to predict on comes from `_value` (JSON text of the input cell, as the predict readers
write it) when the block has it, else from the column named `column` (what `index` passes).
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

# kind -> "module:Class"; imported in the actor only, so the driver never loads torch for this.
KINDS = {
    "embed": "pipelines.inference:Embed",
    "classify": "pipelines.inference:Classify",
    "similar": "pipelines.predict_kinds:Similar",
    "reply": "pipelines.predict_kinds:Reply",
    "segment": "pipelines.predict_kinds:Segment",
    "parse": "pipelines.predict_kinds:Parse",
    "attribute": "pipelines.predict_kinds:Attribute",
}


def kind_class(kind: str):
    if kind not in KINDS:
        raise ValueError(f"unknown kind '{kind}'; kinds: {', '.join(KINDS)}")
    module, name = KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


class Kind:
    """One kind of prediction. Subclasses set `outputs` (column -> arrow type) and implement
    `prepare(value) -> (item, length) | reason` and `run(items) -> (columns, errors | None)`, where
    `columns` maps each output to one value per item (an (n, d) array for fixed-size lists)."""

    columns: tuple[str, ...] = ()     # the output names, known without loading the model
    outputs: dict[str, pa.DataType] = {}
    text_input = True         # the value must be a non-empty string (reply also takes lists)

    def __init__(self, model_dir: str, settings: dict, device: str, dtype: str | None = None):
        self.model_dir, self.settings, self.device, self.dtype = Path(model_dir), settings, device, dtype

    def prepare(self, value: Any):
        raise NotImplementedError

    def run(self, items: list) -> tuple[dict[str, Any], list[str | None] | None]:
        raise NotImplementedError


def over_length(n_tokens: int, limit: int) -> str:
    return f"{n_tokens} tokens, more than the model's {limit} positions"


class _Encoder(Kind):
    """Shared by embed and classify: tokenise once in `prepare`, one forward pass per `run`."""

    def __init__(self, model_dir: str, settings: dict, device: str, dtype: str | None = None):
        super().__init__(model_dir, settings, device, dtype)
        from components.model import Transformer
        from components.tokenizer import Tokenizer
        self.model = Transformer.from_pretrained(model_dir, device=device, dtype=dtype).eval()
        self.tokenizer = Tokenizer.from_pretrained(model_dir)
        positions = self.model.config.max_position_embeddings
        self.limit = min(int(settings.get("max_length") or positions), positions)
        self.truncate = bool(settings.get("truncate", False))

    def prepare(self, text: str):
        ids, segs = self.tokenizer.encode(text, max_length=self.limit if self.truncate else 10**9)
        if len(ids) > self.limit:
            return over_length(len(ids), self.limit)
        return (ids, segs), len(ids)

    def forward(self, items: list):
        import torch
        batch = self.tokenizer.pad(items).to(self.device)
        with torch.no_grad():
            return self.model(batch.input_ids, batch.segment_ids, batch.attention_mask, return_logits=False)


class Embed(_Encoder):
    """L2-normalised pooled [CLS] vectors, as SimBERT.encode and /v1/embeddings compute them."""

    columns = ("embedding",)

    def __init__(self, model_dir: str, settings: dict, device: str, dtype: str | None = None):
        super().__init__(model_dir, settings, device, dtype)
        self.outputs = {"embedding": pa.list_(pa.float32(), self.model.config.hidden_size)}

    def run(self, items):
        import torch
        pooled = self.forward(items).pooled
        return {"embedding": torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()}, None


class Classify(_Encoder):
    """The classifier head's label and class probabilities."""

    columns = ("predicted", "probabilities")

    def __init__(self, model_dir: str, settings: dict, device: str, dtype: str | None = None):
        super().__init__(model_dir, settings, device, dtype)
        from components.attribution import check_classifier, label_names
        check_classifier(self.model)
        self.labels = label_names(self.model)
        self.outputs = {"predicted": pa.string(), "probabilities": pa.list_(pa.float32(), len(self.labels))}

    def run(self, items):
        probs = self.forward(items).class_logits.float().softmax(-1).cpu().numpy()
        return {"predicted": [self.labels[i] for i in probs.argmax(-1)], "probabilities": probs}, None


def check_value(value: Any, text_input: bool) -> str | None:
    """Why a cell cannot be predicted on, or None."""
    if value is None:
        return "missing column"
    if isinstance(value, str):
        return None if value.strip() else "empty text"
    if not text_input and isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return None if value[-1].strip() else "empty last turn"
    return f"not a string: {type(value).__name__}" if text_input else f"not a string or list of strings: {value!r:.60}"


class Predictor:
    """Ray Data actor: one model, blocks in, blocks with predictions out (see the module docstring)."""

    def __init__(self, kind: str, model_dir: str, settings: dict | None = None, batch_size: int = 64,
                 threads: int = 1, device: str = "cpu", column: str = "text", prefix: str = "",
                 dtype: str | None = None):
        import torch

        from components.locations import is_uri, resolve_model
        torch.set_num_threads(max(1, int(threads)))
        if is_uri(str(model_dir)):               # a bucket model: fetched once into this node's cache
            model_dir = resolve_model(str(model_dir))
        self.kind = kind_class(kind)(str(model_dir), dict(settings or {}), device, dtype)
        self.batch_size, self.column, self.prefix = max(1, int(batch_size)), column, prefix

    def values(self, block: pa.Table) -> list:
        if "_value" in block.column_names:
            return [None if v is None else json.loads(v) for v in block["_value"].to_pylist()]
        if self.column not in block.column_names:
            return [None] * block.num_rows
        return block[self.column].to_pylist()

    def __call__(self, block: pa.Table) -> pa.Table:
        t0 = time.perf_counter()
        n = block.num_rows
        errors = block["_error"].to_pylist() if "_error" in block.column_names else [None] * n
        ready, lengths = {}, {}
        for i, value in enumerate(self.values(block)):
            if errors[i] is None:
                errors[i] = check_value(value, self.kind.text_input)
            if errors[i] is None:
                prepared = self.kind.prepare(value)
                if isinstance(prepared, str):
                    errors[i] = prepared
                else:
                    ready[i], lengths[i] = prepared
        columns = {name: [None] * n for name in self.kind.outputs}
        order = sorted(ready, key=lengths.__getitem__)           # similar lengths share a pass
        for start in range(0, len(order), self.batch_size):
            self._run_pass(order[start:start + self.batch_size], ready, columns, errors)
        return self._assemble(block, columns, errors, time.perf_counter() - t0)

    def _run_pass(self, rows: list[int], ready: dict, columns: dict, errors: list) -> None:
        """One pass; if it raises, each row alone, so one row the model chokes on cannot take its
        neighbours (or the job) down with it: it is reported with the exception."""
        try:
            out, failed = self.kind.run([ready[i] for i in rows])
        except Exception as exc:  # noqa: BLE001 - anything a component raises on a row is that row's error
            if len(rows) == 1:
                errors[rows[0]] = f"{type(exc).__name__}: {exc}"
                return
            for i in rows:
                self._run_pass([i], ready, columns, errors)
            return
        for name, values in out.items():
            for j, i in enumerate(rows):
                columns[name][i] = values[j]
        for j, reason in enumerate(failed or []):
            if reason is not None:
                errors[rows[j]] = reason

    def _assemble(self, block: pa.Table, columns: dict, errors: list, seconds: float) -> pa.Table:
        n = block.num_rows
        for name, dtype in self.kind.outputs.items():
            values = [None if errors[i] is not None else v for i, v in enumerate(columns[name])]
            block = block.append_column(self.prefix + name, to_arrow(values, dtype))
        if "_value" in block.column_names:
            block = block.drop_columns(["_value"])         # the driver has the input already
        block = _replace(block, "_error", pa.array(errors, pa.string()))
        return _replace(block, "_seconds", pa.array(np.full(n, seconds / max(n, 1))))


def _replace(table: pa.Table, name: str, array: pa.Array) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, array)
    return table.append_column(name, array)


def to_arrow(values: list, dtype: pa.DataType) -> pa.Array:
    """Python values (None = null) as an arrow array; fixed-size lists from numpy rows in one copy."""
    if pa.types.is_fixed_size_list(dtype):
        width = dtype.list_size
        flat = np.zeros((len(values), width), dtype=dtype.value_type.to_pandas_dtype())
        valid = np.array([v is not None for v in values], dtype=bool)
        for i, v in enumerate(values):
            if v is not None:
                flat[i] = v
        return pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), width, mask=pa.array(~valid))
    return pa.array([v.tolist() if isinstance(v, np.ndarray) else v for v in values], dtype)


def vectors(table: pa.Table, column: str = "embedding") -> np.ndarray:
    """A fixed-size-list column as an (n, d) float32 matrix (nulls must have been dropped)."""
    col = table[column].combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size).astype(np.float32)
