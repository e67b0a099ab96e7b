"""Embed a corpus with Ray Data and build the retrieval index (`bert4ray index`).

    corpus (JSON Lines / Parquet rows {"id"?, "text"} or SimBERT groups {"texts": [...]})
      -> Ray Data -> map_batches(Predictor "embed" actors of pipelines/inference.py, one model each)
      -> VectorIndex (exact, or HNSW beyond a threshold) saved with its table and fingerprint
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import numpy as np

from components import objectstore
from components.index import VectorIndex
from components.weights import model_fingerprint
from pipelines.inference import Predictor
from pipelines.inference import vectors as embedding_matrix


class CorpusError(ValueError):
    """The corpus file cannot be read or holds no usable text."""


def _corpus_bytes(path: str) -> bytes:
    """The corpus file's bytes, from a local path or an object-store URI (s3://, gs://, ...)."""
    from pipelines.data import read_location
    try:
        return read_location(path, "corpus file")
    except (FileNotFoundError, ValueError) as exc:
        raise CorpusError(str(exc)) from None


def read_corpus(path: str | Path) -> list[dict]:
    """Rows {"id", "text"}. Accepts {"id"?, "text"} rows and SimBERT groups ({"texts": [...]} or
    {"text", "synonyms"}), whose sentences get ids "<line>-<j>". Blank texts are skipped. `path`:
    a local file or an object-store URI."""
    path = str(path)
    data = _corpus_bytes(path)
    if path.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq
        try:
            records = pq.read_table(io.BytesIO(data)).to_pylist()
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a broken file
            raise CorpusError(f"{path}: unreadable Parquet file ({exc})") from None
    else:
        records = []
        try:
            lines = data.decode("utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise CorpusError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        for line_no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
    rows, seen = [], set()
    for n, rec in enumerate(records, 1):
        if not isinstance(rec, dict):
            raise CorpusError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
        if "texts" in rec or "synonyms" in rec:
            group = list(rec.get("texts") or []) or [rec.get("text"), *(rec.get("synonyms") or [])]
            items = [(f"{rec.get('id', n)}-{j}", t) for j, t in enumerate(group)]
        elif "text" in rec:
            items = [(str(rec.get("id", n)), rec["text"])]
        else:
            raise CorpusError(f"{path}:{n}: row has no 'text' (or 'texts') field")
        for rid, text in items:
            if isinstance(text, str) and text.strip() and (rid, text) not in seen:
                seen.add((rid, text))
                rows.append({"id": str(rid), "text": text})
    if not rows:
        raise CorpusError(f"{path}: no usable text")
    return rows


def build_index(model_dir: str | Path, corpus: str | Path | list[dict], out_dir: str | Path, kind: str = "auto",
                hnsw_threshold: int = 50_000, actors: int = 1, batch_size: int = 256,
                max_length: int = 64, ef_search: int = 256, nprobe: int = 16,
                num_gpus_per_actor: float = 0.0, actor_model: str | None = None) -> VectorIndex:
    """`num_gpus_per_actor` > 0: each embedding actor asks Ray for that many GPUs and runs its model
    on the GPU Ray gives it. `actor_model`: what the actors load when not `model_dir` itself (a
    bucket URI, see pipelines.model_store.for_actors)."""
    import ray
    from ray.data import ActorPoolStrategy

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"'{model_dir}' is not a model directory (no config.json)")
    rows = corpus if isinstance(corpus, list) else read_corpus(corpus)     # rows: read once by the caller
    # The embed actor of `bert4ray predict`; texts past max_length are cut, as SimBERT.encode does.
    ds = ray.data.from_items(rows).map_batches(
        Predictor, fn_constructor_args=("embed", actor_model or str(model_dir)),
        fn_constructor_kwargs={"settings": {"max_length": max_length, "truncate": True}, "batch_size": 64,
                               "device": "cuda" if num_gpus_per_actor > 0 else "cpu"},
        batch_size=batch_size, batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=1, max_size=max(1, actors)), num_cpus=1,
        num_gpus=num_gpus_per_actor or None)
    ids, texts, vectors = [], [], []
    for batch in ds.iter_batches(batch_size=4096, batch_format="pyarrow"):
        ids += [str(x) for x in batch["id"].to_pylist()]
        texts += [str(x) for x in batch["text"].to_pylist()]
        vectors.append(embedding_matrix(batch))
    matrix = np.concatenate(vectors)
    index = VectorIndex(matrix.shape[1], model_fingerprint(model_dir), kind=kind, hnsw_threshold=hnsw_threshold,
                        ef_search=ef_search, nprobe=nprobe)
    index.add(matrix, ids, texts)
    save_index(index, out_dir)
    return index


def save_index(index: VectorIndex, out_dir: str | Path) -> None:
    """Write the index to a local directory (replaced atomically) or upload it to an object-store
    URI (its marker written last, so a reader never takes a half-uploaded index)."""
    if not objectstore.is_remote(str(out_dir)):
        index.save(out_dir)
        return
    with tempfile.TemporaryDirectory(prefix="bert4ray-index-") as tmp:
        index.save(Path(tmp) / "index")
        objectstore.upload_dir(Path(tmp) / "index", str(out_dir), fingerprint=index.fingerprint)
