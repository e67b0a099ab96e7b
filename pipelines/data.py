"""Training data on Ray Data: read, check, split, build a vocabulary, tokenize.

    files -> read_binary_files -> flat_map(parse: one row per line, with "file:line")
          -> checked by the task (bad rows counted, or fatal with `strict`)
          -> split by a hash of the row's text (duplicates never straddle train/validation)
          -> map_batches(tokenize) -> streamed to every Train worker (get_dataset_shard)

Rows stay JSON strings until the task reads them, so a row of the wrong shape (a number where
text belongs, a missing field) is a counted bad row, not a schema error of the whole file.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from components.tokenizer import SPECIAL_TOKENS, Tokenizer

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")


class DataError(ValueError):
    """The data cannot be used: unreadable file, bad row in strict mode, nothing left to train on."""


@dataclass
class DataReport:
    """What the reader saw: counts per split and the first bad rows with their locations."""
    rows: int = 0
    bad: int = 0
    train: int = 0
    validation: int = 0
    examples: list[str] = field(default_factory=list)   # "file:line: reason"

    def summary(self) -> str:
        text = f"{self.train} training and {self.validation} validation rows"
        if self.bad:
            text += f"; {self.bad} bad row(s) skipped, e.g. {self.examples[0]}"
        return text


# --- files -------------------------------------------------------------------------------------
def check_files(paths: list[str], suffixes: tuple[str, ...] = JSONL_SUFFIXES + PARQUET_SUFFIXES) -> list[str]:
    """Absolute paths of readable files whose names end in one of `suffixes` (a clear error that
    names the file otherwise). An object-store URI (s3://bucket/file.jsonl, a "directory" prefix or
    a glob) becomes the URIs of the files it names."""
    from components import objectstore
    out = []
    for p in paths:
        if objectstore.is_remote(p):
            try:
                out.extend(objectstore.list_files(p, suffixes))
            except objectstore.LocationError as exc:
                raise DataError(str(exc)) from None
            continue
        path = Path(p).expanduser()
        if not path.is_file():
            raise DataError(f"data file '{p}' does not exist")
        if not path.name.endswith(suffixes):
            raise DataError(f"data file '{p}': unknown format (use {', '.join(suffixes)})")
        try:
            with open(path, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            raise DataError(f"data file '{p}' cannot be read ({exc.strerror})") from None
        out.append(str(path.resolve()))
    return out


def read_location(location: str | Path, what: str = "file") -> bytes:
    """The bytes of a local file or an object-store URI; FileNotFoundError naming it when missing."""
    from components import objectstore
    if objectstore.is_remote(str(location)):
        try:
            return objectstore.read_bytes(str(location))
        except objectstore.LocationError as exc:
            if "does not exist" in str(exc):
                raise FileNotFoundError(f"{what} '{location}' does not exist") from None
            raise DataError(f"{what} {exc}") from None
    path = Path(location).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} '{location}' does not exist")
    return path.read_bytes()


def location_exists(location: str | Path) -> bool:
    from components import objectstore
    if objectstore.is_remote(str(location)):
        try:
            return objectstore.exists(str(location))
        except objectstore.LocationError:
            return False
    return Path(location).expanduser().is_file()


def read_binary(paths: list[str]):
    """A Ray Dataset of {"path", "bytes"} for local paths and URIs alike; "path" is what was given
    (Ray Data names an object "bucket/key", without its scheme)."""
    import ray.data
    names = {p.split("://", 1)[-1]: p for p in paths}

    def named(row: dict) -> dict:
        return {"path": names.get(row["path"], row["path"]), "bytes": row["bytes"]}
    return ray.data.read_binary_files(paths, include_paths=True).map(named)


def parse_file(path: str, data: bytes) -> list[dict]:
    """One file's bytes -> rows {"source": "file:line", "record": json text, "error": reason or ""}.

    A JSON file holding one array (LCCC as published: a list of dialogues) gives one row per element
    ("file:element number"). A row that is a non-empty array of strings, there or on a JSON Lines line,
    is a dialogue: it becomes {"turns": [...]}."""
    rows = []
    if path.endswith(PARQUET_SUFFIXES):
        import pyarrow.parquet as pq
        try:
            records = pq.read_table(io.BytesIO(data)).to_pylist()
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a broken file
            return [{"source": f"{path}:0", "record": "", "error": f"unreadable Parquet file ({exc})"}]
        for i, rec in enumerate(records, 1):
            rows.append({"source": f"{path}:{i}", "record": json.dumps(rec, ensure_ascii=False, default=str),
                         "error": ""})
        return rows
    text = data.decode("utf-8", errors="replace")
    document = _json_array(text)
    if document is not None:
        for i, rec in enumerate(document, 1):
            rows.append(_row(f"{path}:{i}", rec, None))
        return rows
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rows.append({"source": f"{path}:{i}", "record": "", "error": "not valid JSON"})
            continue
        rows.append(_row(f"{path}:{i}", rec, line))
    return rows


def _row(source: str, rec, line: str | None) -> dict:
    if isinstance(rec, list) and rec and all(isinstance(u, str) for u in rec):
        rec, line = {"turns": rec}, None                      # LCCC: a dialogue is a list of utterances
    if not isinstance(rec, dict):
        return {"source": source, "record": "", "error": "a row must be a JSON object"}
    return {"source": source, "record": line if line is not None else json.dumps(rec, ensure_ascii=False),
            "error": ""}


def _json_array(text: str) -> list | None:
    """The elements of a file that is one JSON array, spread over any number of lines (LCCC's
    published files); None for JSON Lines, and for a file holding one array of strings (a single
    dialogue on a JSON Lines line)."""
    if not text.lstrip().startswith("["):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and not all(isinstance(v, str) for v in value):
        return value
    return None


def read_rows(paths: list[str], task):
    """A Ray Dataset of parsed rows, each checked by the task (column "error" says why it is bad)."""
    def parse(row: dict) -> list[dict]:
        out = parse_file(row["path"], row["bytes"])
        for r in out:
            if not r["error"]:
                r["error"] = task.check_row(json.loads(r["record"])) or ""
        return out

    return read_binary(paths).flat_map(parse)


def split_key(text: str, seed: int) -> float:
    """A number in [0, 1) fixed by the text: rows with equal text land on the same side."""
    digest = hashlib.blake2b(f"{seed}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def load_splits(recipe, task, train_files: list[str], val_files: list[str]):
    """(train dataset, validation dataset, DataReport) of checked JSON rows, both materialized."""
    cfg = recipe.data
    parsed = read_rows(train_files + val_files, task).materialize()
    report = DataReport(rows=parsed.count())
    bad = parsed.filter(lambda r: r["error"] != "")
    report.bad = bad.count()
    report.examples = [f"{r['source']}: {r['error']}" for r in bad.take(5)]
    if report.bad and cfg.strict:
        raise DataError(f"bad row at {report.examples[0]} (data.strict is true)")
    train, val = _split(parsed, recipe, task, val_files)
    train, val = train.materialize(), val.materialize()
    report.train, report.validation = train.count(), val.count()
    if report.train == 0:
        raise DataError(f"no usable training rows in {', '.join(train_files)} ({report.bad} bad)")
    return train, val, report


def reread_splits(recipe, task, train_files: list[str], val_files: list[str]):
    """The same (train, validation) rows as load_splits, as lazy datasets that read the files again
    whenever they are consumed. A materialized dataset keeps its blocks in the object stores of the
    nodes that made them; a worker group that restarts after losing a node would wait for blocks
    lost with it, while these are read again from the files (or the bucket)."""
    return _split(read_rows(train_files + val_files, task), recipe, task, val_files)


def _split(parsed, recipe, task, val_files: list[str]):
    cfg = recipe.data
    good = parsed.filter(lambda r: r["error"] == "")
    val_set = set(val_files)

    def in_validation(r) -> bool:
        file = r["source"].rsplit(":", 1)[0]
        if val_set:
            return file in val_set
        text = task.texts(json.loads(r["record"]))[0]
        return split_key(text, recipe.seed) < cfg.validation_fraction

    train = good.filter(lambda r: not in_validation(r))
    if cfg.max_rows:
        train = train.limit(cfg.max_rows)
    return train, good.filter(in_validation)


# --- vocabulary --------------------------------------------------------------------------------
def build_vocab(dataset, task, min_count: int = 1, max_size: int = 8000, lowercase: bool = True) -> list[str]:
    """Specials, printable ASCII, then the corpus's characters by frequency (ties by code point).

    Character-level tokens suit Chinese (BERT tokenizes CJK one character per token); Latin words
    fall back to single letters, which WordPiece reaches through '##' pieces, added for ASCII.
    """
    def count(batch):
        counts: Counter = Counter()
        for rec in batch["record"].to_pylist():
            for text in task.texts(json.loads(rec)):
                counts.update(text.lower() if lowercase else text)
        return pa.table({"char": list(counts), "n": list(counts.values())})

    # Per-block counts are small (distinct characters), so they are summed on the driver.
    table = dataset.map_batches(count, batch_format="pyarrow").to_pandas().groupby("char", as_index=False)["n"].sum()
    ascii_chars = [chr(c) for c in range(33, 127) if not (lowercase and "A" <= chr(c) <= "Z")]
    vocab = list(SPECIAL_TOKENS) + ascii_chars + ["##" + c for c in ascii_chars if c.isalnum()]
    seen = set(vocab)
    table = table[table["n"] >= min_count].sort_values(["n", "char"], ascending=[False, True])
    for ch in table["char"]:
        if len(vocab) >= max_size:
            break
        if ch not in seen and not ch.isspace() and ch.isprintable():
            vocab.append(ch)
            seen.add(ch)
    return vocab


# --- tokenization ------------------------------------------------------------------------------
_TOKENIZERS: dict[str, Tokenizer] = {}


def tokenizer_from_text(vocab_text: str, lowercase: bool = True) -> Tokenizer:
    """A Tokenizer from vocab.txt content (cached per process; Ray workers get text, not paths)."""
    key = hashlib.sha1(f"{lowercase}\x00{vocab_text}".encode()).hexdigest()
    tok = _TOKENIZERS.get(key)
    if tok is None:
        path = Path(tempfile.gettempdir()) / f"bert4ray-vocab-{key}.txt"
        if not path.is_file():
            tmp = path.with_suffix(f".{id(path)}.tmp")
            tmp.write_text(vocab_text, encoding="utf-8")
            tmp.replace(path)
        tok = _TOKENIZERS[key] = Tokenizer(path, lowercase=lowercase)
    return tok


def tokenize(dataset, task, vocab_text: str, lowercase: bool, max_length: int):
    """Lazy map_batches: JSON rows -> the task's encoded columns (lists of ints) as Arrow."""
    def encode(batch):
        tok = tokenizer_from_text(vocab_text, lowercase)
        out = [task.encode(json.loads(rec), tok, max_length) for rec in batch["record"].to_pylist()]
        return pa.table({k: [o[k] for o in out] for k in (out[0] if out else {})})

    return dataset.map_batches(encode, batch_format="pyarrow")
