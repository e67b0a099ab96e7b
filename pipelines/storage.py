"""A run's workdir as a local directory or an object-store URI (`s3://bucket/prefix`).

With a URI, everything other nodes or later runs need lives in the bucket: Ray Train's
checkpoints (`<workdir>/ray`, Ray's own `storage_path`), the run files (`runs/<name>.latest`,
`runs/<id>/recipe.yaml`, `state.json`, `vocab.txt`), the exported model (`runs/<id>/model`, or
`--output`), converted corpora and MLflow's artifacts (`mlartifacts/`). The driver keeps a local
mirror for what must be a file (MLflow's SQLite store, copied to and from the bucket at the start
and end of a run; the export being assembled) under BERT4RAY_WORKDIR_CACHE (default: the temp
dir's `bert4ray-workdirs`), keyed by a hash of the URI.

Credentials come from the environment of each process (see components.objectstore): Ray Train is
given the URI, never a file system object that could carry a key into its stored run state.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from components import objectstore


class Workdir:
    def __init__(self, workdir: str | Path):
        text = str(workdir)
        self.remote = text.rstrip("/") if objectstore.is_remote(text) else None
        if self.remote:
            objectstore.check_location(self.remote)        # one line before anything starts
            root = os.environ.get("BERT4RAY_WORKDIR_CACHE") or Path(tempfile.gettempdir()) / "bert4ray-workdirs"
            self.local = Path(root) / hashlib.sha256(self.remote.encode()).hexdigest()[:16]
        else:
            self.local = Path(text).expanduser().resolve()

    def __str__(self) -> str:
        return self.remote or str(self.local)

    def location(self, rel: str) -> str:
        """Where `rel` (e.g. "runs/x/model") lives for other processes: a URI or a local path."""
        return objectstore.join(self.remote, rel) if self.remote else str(self.local / rel)

    def read_text(self, rel: str) -> str | None:
        if not self.remote:
            path = self.local / rel
            return path.read_text(encoding="utf-8") if path.is_file() else None
        location = self.location(rel)
        return objectstore.read_bytes(location).decode("utf-8") if objectstore.exists(location) else None

    def write_text(self, rel: str, text: str) -> None:
        path = self.local / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if self.remote:
            objectstore.write_bytes(self.location(rel), text.encode("utf-8"))

    def push_file(self, rel: str) -> None:
        """Copy the local mirror's `rel` to the bucket (no-op for a local workdir)."""
        if self.remote and (self.local / rel).is_file():
            objectstore.write_bytes(self.location(rel), (self.local / rel).read_bytes())

    def pull_file(self, rel: str) -> None:
        """The bucket's `rel` into the local mirror unless the mirror has it."""
        path = self.local / rel
        if self.remote and not path.is_file() and objectstore.exists(self.location(rel)):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(objectstore.read_bytes(self.location(rel)))

    def ray_storage(self) -> str:
        return self.location("ray")

    def artifact_root(self) -> str | None:
        """MLflow's artifact location for a bucket workdir (None: tracking's local default)."""
        return self.location("mlartifacts") if self.remote else None


def publish_model(local_dir: Path, location: str) -> None:
    """Upload an exported model directory; it becomes visible as a model (config.json, then the
    completion marker holding its fingerprint) only once every weight file is in place."""
    from components.weights import model_fingerprint
    objectstore.upload_dir(local_dir, location, fingerprint=model_fingerprint(local_dir))


def local_output(output: str | None, workdir: Workdir, run_id: str) -> tuple[Path, str | None]:
    """(local directory the export is assembled in, bucket location it is published to or None)."""
    if output and objectstore.is_remote(str(output)):
        objectstore.check_location(str(output))
        return workdir.local / "runs" / run_id / "export", str(output).rstrip("/")
    if output:
        return Path(output), None
    if workdir.remote:
        return workdir.local / "runs" / run_id / "model", workdir.location(f"runs/{run_id}/model")
    return workdir.local / "runs" / run_id / "model", None


def job_output(output: str | Path | None, default_local: Path) -> tuple[Path, str | None]:
    """(local directory a job writes its outputs in, bucket location they go to when it ends, or
    None) for mgs, probe and tune: a bucket `output` is checked before any work starts."""
    if output and objectstore.is_remote(str(output)):
        objectstore.check_location(str(output))
        return default_local, str(output).rstrip("/")
    return (Path(output).expanduser() if output else default_local), None


def publish_output(local_dir: Path, location: str | None) -> None:
    """Upload a finished job's output directory (a model under it published as a model first, so
    that it resolves by its content fingerprint); the directory's completion marker goes last."""
    if location is None:
        return
    models = tuple(c.parent for c in sorted(local_dir.rglob("config.json")) if c.parent != local_dir)
    for model in models:
        publish_model(model, objectstore.join(location, model.relative_to(local_dir).as_posix()))
    objectstore.upload_dir(local_dir, location, skip=models)
