"""Locations in object stores: any URI that `pyarrow.fs` understands (`s3://bucket/key`, `gs://`,
`abfs://`, `hdfs://`), read and written through pyarrow's file systems.

    from components import objectstore
    objectstore.check_location("s3://bucket/runs")          # bucket exists, credentials work
    objectstore.list_files("s3://bucket/data/*.jsonl")       # -> ["s3://bucket/data/a.jsonl", ...]
    objectstore.upload_dir("out/model", "s3://bucket/models/m1")   # config.json, then a marker, last

Credentials, region and endpoint come only from the standard environment, read by pyarrow itself
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL,
AWS_ENDPOINT_URL_S3, AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS, ...); this module never takes,
stores or prints a secret. Errors are LocationError (a ValueError): one line naming the location.

A model directory in a bucket is "published" when its config.json and then MARKER are written
(`upload_dir` writes them last), so a reader never takes a half-uploaded directory for a model.
Its cache key (see components.locations) is the content fingerprint that MARKER records (SHA-256
over config.json and the weights, as components.weights.model_fingerprint), or, for a directory
another tool uploaded, a hash of its listing (names, sizes, modification times).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import posixpath
import re
from pathlib import Path

MARKER = "_bert4ray_complete"
"""Written last into an uploaded directory; holds the content fingerprint of a model directory."""
_REMOTE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
_KNOWN = "s3://, gs://, abfs://, hdfs://"
SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "abfss://", "hdfs://", "viewfs://")
"""URI prefixes of the file systems pyarrow ships."""


class LocationError(ValueError):
    """A location that cannot be used: unknown scheme, missing bucket or object, no access."""


def is_remote(location) -> bool:
    """True for a URI with a scheme other than file:// (an object store, or a scheme nobody knows)."""
    m = _REMOTE.match(str(location)) if isinstance(location, str) else None
    return bool(m) and m.group(1).lower() != "file"


def scheme(location: str) -> str:
    m = _REMOTE.match(location)
    return m.group(1).lower() if m else ""


def join(location: str, *parts: str) -> str:
    return posixpath.join(location.rstrip("/"), *parts)


def _reason(exc: Exception) -> str:
    """pyarrow's message shortened to what the user can act on (no request ids)."""
    text = str(exc)
    if any(k in text for k in ("ACCESS_DENIED", "SIGNATURE_DOES_NOT_MATCH", "INVALID_ACCESS_KEY",
                               "AccessDenied", "Forbidden", "403")):
        return "access denied: check the credentials in the environment (AWS_ACCESS_KEY_ID, ...)"
    if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text:
        return "the bucket does not exist"
    if "Unrecognized filesystem type" in text or "unsupported" in text.lower():
        return f"unknown scheme (use a local path or one of {_KNOWN})"
    line = text.splitlines()[0] if text else type(exc).__name__
    return re.sub(r"\s*\(Request ID: [^)]*\)", "", line)[:300]


def filesystem(location: str):
    """(pyarrow FileSystem, path inside it) for a URI; LocationError for an unknown scheme."""
    import pyarrow.fs as pafs
    try:
        return pafs.FileSystem.from_uri(location)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ValueError
        reason = _reason(exc).replace("unknown scheme", f"unknown scheme '{scheme(location)}'")
        raise LocationError(f"location '{location}': {reason}") from None


def _info(fs, path: str, location: str):
    try:
        return fs.get_file_info(path)
    except Exception as exc:  # noqa: BLE001 - as above
        raise LocationError(f"location '{location}': {_reason(exc)}") from None


def check_location(location: str) -> None:
    """The location's scheme is known, its bucket exists and the credentials may read it (a HEAD
    of the bucket: nothing is written). Raises LocationError."""
    import pyarrow.fs as pafs
    fs, path = filesystem(location)
    bucket = path.split("/", 1)[0]
    if bucket and _info(fs, bucket, location).type == pafs.FileType.NotFound:
        raise LocationError(f"location '{location}': bucket '{bucket}' does not exist")


def _uri(location: str, path: str) -> str:
    return f"{scheme(location)}://{path}"


def exists(location: str) -> bool:
    import pyarrow.fs as pafs
    fs, path = filesystem(location)
    return _info(fs, path, location).type != pafs.FileType.NotFound


def _walk(fs, root: str, location: str) -> list:
    import pyarrow.fs as pafs
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except Exception as exc:  # noqa: BLE001 - as above
        raise LocationError(f"location '{location}': {_reason(exc)}") from None
    return [i for i in infos if i.type == pafs.FileType.File]


def list_files(location: str, suffixes: tuple[str, ...] = ()) -> list[str]:
    """URIs of the files a location names: one object, every file under a "directory" prefix, or
    the files matching a glob (`*`, `?`, `[...]` within a part, `**` for any depth), sorted; only
    names ending in one of `suffixes` when given. LocationError when nothing matches."""
    import pyarrow.fs as pafs
    check_location(location)
    fs, path = filesystem(location)
    if not any(c in path for c in "*?["):
        info = _info(fs, path, location)
        if info.type == pafs.FileType.File:
            return [location]
        files = _walk(fs, path, location) if info.type == pafs.FileType.Directory else []
    else:
        parts = path.split("/")
        fixed = next(i for i, p in enumerate(parts) if any(c in p for c in "*?["))
        files = [i for i in _walk(fs, "/".join(parts[:fixed]), location) if _glob_match(i.path.split("/"), parts)]
    names = sorted(_uri(location, i.path) for i in files
                   if not posixpath.basename(i.path).startswith(("_", ".")))
    if suffixes:
        names = [n for n in names if n.endswith(suffixes)]
    if not names:
        raise LocationError(f"data '{location}' matches no file" + (f" ({', '.join(suffixes)})" if suffixes else ""))
    return names


def _glob_match(parts: list[str], pattern: list[str]) -> bool:
    """Path parts against pattern parts as Python's recursive glob: `*`, `?` and `[...]` match
    within one part, a `**` part matches any number of parts (none too)."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_glob_match(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _glob_match(parts[1:], pattern[1:])


def read_bytes(location: str) -> bytes:
    fs, path = filesystem(location)
    try:
        with fs.open_input_stream(path) as fh:
            return fh.read()
    except FileNotFoundError:
        raise LocationError(f"'{location}' does not exist") from None
    except Exception as exc:  # noqa: BLE001 - as above
        raise LocationError(f"'{location}': {_reason(exc)}") from None


def write_bytes(location: str, data: bytes) -> None:
    """One object written in one PUT: readers see the old content or the new, never a part."""
    fs, path = filesystem(location)
    try:
        with fs.open_output_stream(path) as fh:
            fh.write(data)
    except Exception as exc:  # noqa: BLE001 - as above
        raise LocationError(f"'{location}': {_reason(exc)}") from None


def upload_file(local: str | Path, location: str) -> None:
    """A local file streamed to `location`: a large one goes up in parts, and the object appears
    only when its last part is in (S3's multipart upload), so readers never see a part of it."""
    import shutil
    fs, path = filesystem(location)
    try:
        with open(local, "rb") as src, fs.open_output_stream(path) as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
    except Exception as exc:  # noqa: BLE001 - as above
        raise LocationError(f"'{location}': {_reason(exc)}") from None


def delete(location: str) -> None:
    """Delete one object; a missing one is no error."""
    fs, path = filesystem(location)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass
    except Exception as exc:  # noqa: BLE001 - as above
        raise LocationError(f"'{location}': {_reason(exc)}") from None


def download_dir(location: str, dest: str | Path) -> None:
    """Every file under `location` copied into the local directory `dest`."""
    import pyarrow.fs as pafs
    fs, path = filesystem(location)
    Path(dest).mkdir(parents=True, exist_ok=True)
    try:
        pafs.copy_files(path, str(Path(dest).resolve()), source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem(), use_threads=True)
    except Exception as exc:  # noqa: BLE001 - as above
        raise LocationError(f"cannot download '{location}': {_reason(exc)}") from None


def upload_dir(local: str | Path, location: str, fingerprint: str = "", skip: tuple[Path, ...] = ()) -> None:
    """Upload a local directory to `location`, config.json (if any) after every other file and
    MARKER (holding `fingerprint`) last: the directory counts as complete only once MARKER exists.
    Files under the subdirectories `skip` (uploaded already) are left out."""
    local = Path(local)
    files = sorted(p for p in local.rglob("*") if p.is_file() and not any(d in p.parents for d in skip))
    files.sort(key=lambda p: p.name == "config.json")          # stable: config.json goes last
    fs, root = filesystem(location)
    with contextlib.suppress(OSError):                       # re-publishing: incomplete until done
        fs.delete_file(posixpath.join(root, MARKER))
    for p in files:
        upload_file(p, join(location, p.relative_to(local).as_posix()))
    write_bytes(join(location, MARKER), fingerprint.encode())


# --- models in buckets: the handler components.locations registers for these schemes -----------
def pin_model(reference: str) -> str:
    """`reference#<fingerprint>`: the content fingerprint of the model directory at `reference`
    (see the module doc). LocationError when it holds no config.json."""
    return _pin_directory(reference, "config.json", "model", trust_marker=True)


def pin_index(reference: str) -> str:
    """`reference#listing-<hash>` of the index directory at `reference` (an index's MARKER names
    the model it was built with, not its own content, so the listing keys it). LocationError when
    it holds no index.json."""
    return _pin_directory(reference, "index.json", "index", trust_marker=False)


def _pin_directory(reference: str, required: str, what: str, trust_marker: bool) -> str:
    base = reference.split("#", 1)[0].rstrip("/")
    check_location(base)
    fs, root = filesystem(base)
    files = _walk(fs, root, base)
    rel = {posixpath.relpath(i.path, root): i for i in files}
    if required not in rel:
        raise LocationError(f"{what} '{base}' holds no {required}: not {'an' if what[0] in 'aeiou' else 'a'} "
                            f"{what} directory")
    if trust_marker and MARKER in rel:
        fingerprint = read_bytes(join(base, MARKER)).decode().strip()
        if fingerprint:
            return f"{base}#{fingerprint}"
    h = hashlib.sha256()
    for name in sorted(rel):
        h.update(f"{name}\0{rel[name].size}\0{rel[name].mtime_ns}\n".encode())
    return f"{base}#listing-{h.hexdigest()}"


def endpoint_scope() -> str:
    """What tells two equal bucket names apart: the endpoint the environment names (no secret)."""
    import os
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""


def fetch_directory(pinned: str, dest: Path) -> None:
    """The directory a pinned reference names, downloaded into `dest` (without MARKER)."""
    download_dir(pinned.split("#", 1)[0], dest)
    (dest / MARKER).unlink(missing_ok=True)
