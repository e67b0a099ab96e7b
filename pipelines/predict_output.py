"""Outputs of `bert4ray predict`: OUT is a local directory or an object-store prefix
(`s3://bucket/prefix`, any URI components.objectstore writes).

    OUT/<name>.parquet            one per input file: its good rows, its columns and the predictions
    OUT/_errors/<name>.jsonl      that file's bad rows {file, row, reason} (none: no file)
    OUT/_predict.json             what OUT holds (kind, model fingerprint, column, settings)
    OUT.errors.jsonl              every file's bad rows, beside OUT

Every file appears whole or not at all, on disk by one rename, in a bucket by one upload (an object
exists only once its upload completed), and a file's errors are written before its Parquet file:
an existing OUT/<name>.parquet means that input file is done, which is what a re-run skips.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from components import io, objectstore
from pipelines.data import read_location
from pipelines.predict_io import InputFile, input_table


class OutputDir:
    def __init__(self, spec: str | Path):
        text = str(spec)
        self.remote = text.rstrip("/") if objectstore.is_remote(text) else None
        self.path = None if self.remote else Path(text).expanduser()
        if self.remote:
            objectstore.check_location(self.remote)        # scheme, bucket, credentials: one line
        elif self.path.exists() and not self.path.is_dir():
            raise ValueError(f"--output '{self.path}' is a file; give a directory")

    def __str__(self) -> str:
        return self.remote or str(self.path)

    def location(self, name: str) -> str:
        return objectstore.join(self.remote, name) if self.remote else str(self.path / name)

    def beside(self, suffix: str) -> str:
        """A file next to OUT, named after it (OUT.errors.jsonl)."""
        return str(self).rstrip("/\\") + suffix

    def shown(self, location: str) -> str | Path:
        """A location as results give it: a Path on disk, the URI in a bucket."""
        return location if self.remote else Path(location)


def read_text(location: str) -> str | None:
    """The file's text, or None when there is none (one read, no separate existence check)."""
    try:
        return read_location(location).decode("utf-8")
    except FileNotFoundError:
        return None


def publish(location: str, fill: Callable[[Path], None]) -> None:
    """`fill(tmp)` writes the file; it then appears at `location` whole (see the module doc)."""
    if not objectstore.is_remote(location):
        with io.atomic_file(location) as tmp:
            fill(tmp)
        return
    with tempfile.TemporaryDirectory(prefix="bert4ray-predict-") as tmp:
        path = Path(tmp) / "part"
        fill(path)
        objectstore.upload_file(path, location)


def remove(location: str) -> None:
    if objectstore.is_remote(location):
        objectstore.delete(location)
    else:
        Path(location).unlink(missing_ok=True)


def write_jsonl(location: str, rows: list[dict]) -> None:
    """The rows as JSON Lines at `location`, or no file there when there are none."""
    if not rows:
        remove(location)
        return
    publish(location, lambda tmp: io.write_jsonl(tmp, rows))


def write_output(f: InputFile, out: OutputDir, results: pa.Table, outputs: list[str]) -> list[dict]:
    """Write OUT/<name>: the good rows with the file's columns and `outputs`, in input order; the
    bad rows' {file, row, reason} go to OUT/_errors/<name>.jsonl first, and are returned."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    inputs = input_table(f)
    results = results.sort_by("_row")
    if results.num_rows != inputs.num_rows:
        raise RuntimeError(f"{f.path}: {results.num_rows} predictions for {inputs.num_rows} rows")
    keep = pc.is_null(results["_error"])
    table = inputs.drop_columns([c for c in outputs if c in inputs.column_names]).filter(keep)
    for name in outputs:
        table = table.append_column(name, results[name].filter(keep))
    bad = [{"file": f.path, "row": r, "reason": e}
           for r, e in zip(results["_row"].to_pylist(), results["_error"].to_pylist()) if e is not None]
    write_jsonl(errors_location(out, f), bad)
    publish(out.location(f.name), lambda tmp: pq.write_table(table, tmp))
    return bad


def errors_location(out: OutputDir, f: InputFile) -> str:
    return out.location("_errors/" + f.name.removesuffix(".parquet") + ".jsonl")


def read_errors(out: OutputDir, f: InputFile) -> list[dict]:
    text = read_text(errors_location(out, f)) or ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]
