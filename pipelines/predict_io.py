"""Inputs and outputs of `bert4ray predict`.

Inputs: JSON Lines (.jsonl, .json, .ndjson), Parquet (.parquet, .pq) and CSV (.csv: UTF-8 with a
header row, every column read as text): a file, a directory (searched recursively; names starting
with "." or "_" are skipped) or a glob, on local disk or in an object store (`s3://bucket/prefix`,
any URI components.objectstore reads; each Ray task opens its chunk there itself). Before Ray
starts, each file is checked (readable, has the column) and cut into chunks: byte ranges that end
on a row boundary for text files (one pass over the file, which also counts its rows), row groups
for Parquet. A Ray Data task reads a chunk into
(`_file`, `_row`, `_value` = the cell as JSON text, `_error`); every chunk has this one schema, so
Ray Data may batch rows of different files together.

Row ids (`_row`, 1-based): the line number in JSON Lines (blank lines are skipped, not errors),
the record number after the header in CSV, the row number in Parquet.

The driver writes each file's output (pipelines/predict_output.py) once all its rows are back: its
own input columns (`input_table`, read again, so Parquet types survive exactly), the good rows only,
in input order, and the prediction columns; bad rows go to the file's errors list.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from components import objectstore

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet",
           ".csv": "csv"}
CHUNK_BYTES = 4 << 20
INTERNAL = ("_file", "_row", "_value", "_error", "_seconds")


@dataclass
class InputFile:
    path: str
    fmt: str
    name: str                          # the output file, relative to OUT
    rows: int = 0
    chunks: list[dict] = field(default_factory=list)
    header: list[str] = field(default_factory=list)     # CSV column names


def find_inputs(spec: str, out_dir: str | Path) -> list[InputFile]:
    """The input files named by `spec` (file, directory or glob; a local path or an object-store
    URI), sorted, with their output names; files under `out_dir` (a path or a URI) are never inputs."""
    if objectstore.is_remote(spec):
        base, found = _find_remote(spec)
        out = str(out_dir).rstrip("/") + "/"
        found = [u for u in found if not u.startswith(out)]
        rel = [Path(u[len(base):].lstrip("/")) for u in found]
        return _named(spec, [(u, r) for u, r in zip(found, rel)
                             if r.suffix.lower() in FORMATS and not any(p.startswith((".", "_")) for p in r.parts)])
    path = Path(spec).expanduser()
    if glob.has_magic(spec):
        prefix = spec[:re.search(r"[*?[]", spec).start()]           # the directory before the pattern
        base = Path(prefix) if prefix.endswith(os.sep) else Path(prefix).parent
        found = [Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file()]
        if not found:
            raise FileNotFoundError(f"no input file matches '{spec}'")
    elif path.is_dir():
        base = path
        found = [p for p in path.rglob("*") if p.is_file()
                 and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)]
    elif path.is_file():
        base, found = path.parent, [path]
        _format(path)
    else:
        raise FileNotFoundError(f"input '{spec}' does not exist")
    out = Path(out_dir).expanduser().resolve() if not objectstore.is_remote(str(out_dir)) else None
    found = sorted(p for p in found if p.suffix.lower() in FORMATS and out not in p.resolve().parents)
    base = base.resolve()
    return _named(spec, [(str(p.resolve()), p.resolve().relative_to(base) if p.resolve().is_relative_to(base)
                          else Path(p.name)) for p in found])


def _find_remote(spec: str) -> tuple[str, list[str]]:
    """(the prefix output names are relative to, the URIs) of a bucket object, prefix or glob."""
    try:
        found = objectstore.list_files(spec)
    except objectstore.LocationError as exc:
        message = str(exc).replace("data '", "input '", 1)
        raise (FileNotFoundError if "matches no file" in message else ValueError)(message) from None
    if found == [spec]:                                          # one object
        _format(Path(spec))
        return spec.rsplit("/", 1)[0], found
    if glob.has_magic(spec):
        return spec[:re.search(r"[*?[]", spec).start()].rsplit("/", 1)[0], found
    return spec.rstrip("/"), found


def _named(spec: str, found: list[tuple[str, Path]]) -> list[InputFile]:
    """InputFiles with output names: the path relative to the input's base with .parquet for its
    suffix (the whole name plus .parquet where two inputs would share one)."""
    if not found:
        raise ValueError(f"no JSON Lines, Parquet or CSV files in '{spec}'")
    found = sorted(found)
    names = [str(r.with_suffix(".parquet")) for _, r in found]
    clashes = {n for n in names if names.count(n) > 1}
    names = [str(r) + ".parquet" if n in clashes else n for (_, r), n in zip(found, names)]
    return [InputFile(p, _format(Path(p)), n) for (p, _), n in zip(found, names)]


def open_input(path: str):
    """A seekable binary file over a local path or an object-store URI (buffered: rows are read a
    line at a time)."""
    if not objectstore.is_remote(path):
        return open(path, "rb")
    fs, inner = objectstore.filesystem(path)
    try:
        return io.BufferedReader(fs.open_input_file(inner), buffer_size=1 << 20)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises OSError and its own types
        raise ValueError(f"cannot read '{path}' ({exc})") from None


def parquet_file(path: str):
    import pyarrow.parquet as pq
    if not objectstore.is_remote(path):
        return pq.ParquetFile(path)
    fs, inner = objectstore.filesystem(path)
    return pq.ParquetFile(fs.open_input_file(inner))


def _format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot read '{path}': inputs are JSON Lines (.jsonl), Parquet (.parquet) or CSV (.csv)")
    return fmt


# --- checks and chunks (driver, before Ray starts) -------------------------------------------
def inspect(f: InputFile, column: str, outputs: list[str]) -> None:
    """Refuse a file that cannot be read as its format or lacks the column (one line, exit 2)."""
    if f.fmt == "parquet":
        try:
            names = parquet_file(f.path).schema_arrow.names
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a broken file
            raise ValueError(f"{f.path}: unreadable Parquet file ({exc})") from None
    elif f.fmt == "csv":
        names = f.header = _csv_header(f.path)
    else:
        first = _first_record(f.path)
        if first is None:
            return                                   # no rows: an empty output, nothing to check
        names = list(first)
    if column not in names:
        raise ValueError(f"{f.path}: no column '{column}' (columns: {', '.join(map(str, names)) or 'none'}); "
                         "choose one with --column")
    clash = [c for c in outputs if c in names]
    if clash:
        raise ValueError(f"{f.path}: input column '{clash[0]}' would be overwritten by the prediction; "
                         "name the outputs apart with --prefix")


def _first_record(path: str) -> dict | None:
    with open_input(path) as fh:
        for line in fh:
            if line.strip():
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise ValueError(f"{path}: not JSON Lines (first row: {exc})") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{path}: not JSON Lines of objects (first row is a {type(record).__name__})")
                return record
    return None


def _csv_header(path: str) -> list[str]:
    try:
        with io.TextIOWrapper(open_input(path), encoding="utf-8", newline="") as fh:
            header = next(csv.reader(fh), None)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 CSV file") from None
    except csv.Error as exc:
        raise ValueError(f"{path}: unreadable CSV file ({exc})") from None
    if not header:
        raise ValueError(f"{path}: empty CSV file (a header row is needed)")
    return header


def plan(f: InputFile, index: int, column: str, reserved: list[str], chunk_bytes: int = CHUNK_BYTES) -> None:
    """Fill `f.chunks` (descriptors for `read_chunk`) and `f.rows`."""
    common = {"file": index, "path": f.path, "fmt": f.fmt, "column": column, "reserved": reserved,
              "header": f.header}
    if f.fmt == "parquet":
        meta = parquet_file(f.path).metadata
        first = 1
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if n:
                f.chunks.append({**common, "start": g, "end": g + 1, "first": first})
            first += n
        f.rows = first - 1
        return
    for start, end, first, rows in _text_chunks(f.path, f.fmt == "csv", chunk_bytes):
        f.chunks.append({**common, "start": start, "end": end, "first": first})
        f.rows += rows


def _text_chunks(path: str, is_csv: bool, chunk_bytes: int) -> Iterator[tuple[int, int, int, int]]:
    """(start, end, first id, rows) byte ranges of about chunk_bytes that end on a row boundary. A
    CSV newline inside quotes is not a boundary: an odd count of quotes so far means inside."""
    with open_input(path) as fh:
        offset, quoted, number, rows = 0, 0, 0, 0
        if is_csv:                                               # skip the header record
            for line in fh:
                offset += len(line)
                quoted ^= line.count(b'"') & 1
                if not quoted:
                    break
        start, first, rows = offset, number + 1, 0
        for line in fh:
            offset += len(line)
            if is_csv:
                quoted ^= line.count(b'"') & 1
                if quoted:
                    continue
                blank = not line.rstrip(b"\r\n")
                number += not blank                              # CSV ids count records
            else:
                blank = not line.strip()
                number += 1                                      # JSON Lines ids are line numbers
            rows += not blank
            if offset - start >= chunk_bytes:
                if rows:
                    yield start, offset, first, rows
                start, first, rows = offset, number + 1, 0
        if rows:
            yield start, offset, first, rows


# --- reading ---------------------------------------------------------------------------------
def chunk_rows(chunk: dict) -> Iterator[tuple[int, dict | None, str | None]]:
    """(row id, record or None, error or None) for every row of a chunk, in order (of a Parquet
    chunk only the predicted column is read)."""
    if chunk["fmt"] == "parquet":
        column = chunk["column"]
        table = parquet_file(chunk["path"]).read_row_groups(range(chunk["start"], chunk["end"]), columns=[column])
        for k, value in enumerate(table[column].to_pylist()):
            yield chunk["first"] + k, {column: value}, None
        return
    with open_input(chunk["path"]) as fh:
        fh.seek(chunk["start"])
        data = fh.read(chunk["end"] - chunk["start"])
    yield from (_csv_rows(data, chunk) if chunk["fmt"] == "csv" else _jsonl_rows(data, chunk["first"]))


def _jsonl_rows(data: bytes, first: int):
    for k, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except UnicodeDecodeError:
            yield first + k, None, "not UTF-8 text"
            continue
        except json.JSONDecodeError as exc:
            yield first + k, None, f"not valid JSON ({exc.msg})"
            continue
        if isinstance(record, dict):
            yield first + k, record, None
        else:
            yield first + k, None, f"not a JSON object ({type(record).__name__})"


def _csv_rows(data: bytes, chunk: dict):
    header = chunk["header"]
    text = data.decode("utf-8", errors="replace")
    k = 0
    for fields in csv.reader(io.StringIO(text, newline="")):
        if not fields:
            continue
        row, k = chunk["first"] + k, k + 1
        if len(fields) != len(header):
            yield row, None, f"{len(fields)} fields where the header has {len(header)}"
        else:
            yield row, dict(zip(header, fields)), None


def read_chunk(batch: pa.Table) -> pa.Table:
    """Ray Data UDF: chunk descriptors (JSON text in `chunk`) in, (`_file`, `_row`, `_value`,
    `_error`) rows out."""
    files, rows, values, errors = [], [], [], []
    for text in batch["chunk"].to_pylist():
        chunk = json.loads(text)
        column, reserved = chunk["column"], set(chunk["reserved"])
        for row, record, error in chunk_rows(chunk):
            value = None
            if record is not None:
                clash = next((c for c in record if c in reserved), None)
                if clash is not None:
                    error = f"input column '{clash}' would be overwritten by the prediction (use --prefix)"
                else:
                    value, error = cell_json(record.get(column))
            files.append(chunk["file"])
            rows.append(row)
            values.append(value)
            errors.append(error)
    return pa.table({"_file": pa.array(files, pa.int32()), "_row": pa.array(rows, pa.int64()),
                     "_value": pa.array(values, pa.string()), "_error": pa.array(errors, pa.string())})


def cell_json(value) -> tuple[str | None, str | None]:
    """(JSON text, None), (None, None) for a missing cell, or (None, why) for a value that is no
    JSON (bytes, dates: never text to predict on)."""
    if value is None:
        return None, None
    try:
        return json.dumps(value, ensure_ascii=False), None
    except (TypeError, ValueError):
        return None, f"not a string: {type(value).__name__}"


# --- the input's own columns (driver, when its output is written) ------------------------
def input_table(f: InputFile) -> pa.Table:
    """Every row of the file with its own columns (a row that could not be read: all null)."""
    if f.fmt == "parquet":
        return parquet_file(f.path).read()
    records = [record for chunk in f.chunks for _, record, _ in chunk_rows({**chunk, "column": None})]
    if f.fmt == "csv":
        return pa.table({h: pa.array([r[h] if r else None for r in records], pa.string()) for h in f.header})
    names = list(dict.fromkeys(k for r in records if r for k in r))
    if not names:                                   # no row could be read: rows without columns
        return pa.table({"_": pa.nulls(len(records))}).drop_columns(["_"])
    return unify([records_to_table(records[i:i + 50_000], names) for i in range(0, len(records), 50_000)])


def records_to_table(records: list[dict | None], names: list[str]) -> pa.Table:
    """JSON objects as the columns `names` (absent keys are null); a column whose values share no
    arrow type (a number here, text there) is kept as JSON text."""
    columns = {}
    for name in names:
        values = [r.get(name) if r else None for r in records]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
            columns[name] = _as_json(values)
    return pa.table(columns)


def _as_json(values: list) -> pa.Array:
    return pa.array([None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in values],
                    pa.string())


def unify(pieces: list[pa.Table]) -> pa.Table:
    """Concatenate tables whose columns may differ; columns of conflicting types become JSON text."""
    try:
        return pa.concat_tables(pieces, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    types: dict[str, set] = {}
    for t in pieces:
        for fld in t.schema:
            if not pa.types.is_null(fld.type):
                types.setdefault(fld.name, set()).add(fld.type)
    mixed = {name for name, ts in types.items() if len(ts) > 1}
    return pa.concat_tables([_json_columns(t, mixed) for t in pieces], promote_options="permissive")


def _json_columns(table: pa.Table, names: set[str]) -> pa.Table:
    for name in names & set(table.column_names):
        table = table.set_column(table.column_names.index(name), name, _as_json(table[name].to_pylist()))
    return table
