"""A FAISS vector index of sentence embeddings, saved with its id/text table and the fingerprint of
the model that embedded it.

Vectors are L2-normalised, so inner product = cosine. Small corpora use exact search
(`IndexFlatIP`); beyond `hnsw_threshold` vectors (or when asked) an HNSW graph
(`IndexHNSWFlat`, inner-product metric) gives approximate search. `ivf` (an inverted file,
`IndexIVFFlat` over k-means cells, `nprobe` cells searched per query) is the choice for large
batched query loads: it is trained on the first vectors added, so add a representative batch
first. A directory holds:

    index.faiss     the FAISS index
    table.parquet   row -> (id, text)
    index.json      kind, dimension, count, the model fingerprint and the SHA-256 of index.faiss

An index built with another model, or whose files were damaged, is refused on load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.io import atomic_directory

INDEX_KINDS = ("auto", "flat", "hnsw", "ivf")


class IndexLoadError(ValueError):
    """The index directory is missing, damaged, or belongs to another model."""


@dataclass
class Hit:
    id: str
    text: str
    score: float


def normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class VectorIndex:
    def __init__(self, dim: int, fingerprint: str, kind: str = "auto", hnsw_threshold: int = 50_000,
                 hnsw_m: int = 32, ef_construction: int = 200, ef_search: int = 256,
                 ivf_lists: int | None = None, nprobe: int = 16):
        if kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {kind!r}; valid: {', '.join(INDEX_KINDS)}")
        self.dim, self.fingerprint, self.kind = dim, fingerprint, kind
        self.hnsw_threshold, self.hnsw_m = hnsw_threshold, hnsw_m
        self.ef_construction, self.ef_search = ef_construction, ef_search
        self.ivf_lists, self.nprobe = ivf_lists, nprobe
        """IVF cells (default 4·sqrt(N) of the first batch) and cells searched per query."""
        self.ids: list[str] = []
        self.texts: list[str] = []
        self._index: faiss.Index | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def resolved_kind(self) -> str:
        if self._index is not None:
            if isinstance(self._index, faiss.IndexHNSWFlat):
                return "hnsw"
            return "ivf" if isinstance(self._index, faiss.IndexIVF) else "flat"
        return self.kind

    def _new_index(self, n: int) -> faiss.Index:
        kind = self.kind
        if kind == "auto":
            kind = "hnsw" if n >= self.hnsw_threshold else "flat"
        if kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        if kind == "ivf":
            lists = self.ivf_lists or max(1, int(4 * n ** 0.5))
            if n < lists:
                raise ValueError(f"an ivf index with {lists} cells needs at least {lists} vectors in its first add, "
                                 f"got {n}")
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, lists, faiss.METRIC_INNER_PRODUCT)
            index.nprobe = self.nprobe
            return index
        index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search
        return index

    def add(self, vectors: np.ndarray, ids: list, texts: list[str]) -> None:
        """Append vectors (N, dim) with their ids and texts (incremental: the index grows in place)."""
        vectors = normalize(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors must be (N, {self.dim}), got {vectors.shape}")
        if not len(vectors) == len(ids) == len(texts):
            raise ValueError(f"{len(vectors)} vectors, {len(ids)} ids and {len(texts)} texts differ in number")
        if self._index is None:
            self._index = self._new_index(len(vectors))
            if not self._index.is_trained:                       # ivf: k-means cells from this batch
                self._index.train(vectors)
        self._index.add(vectors)
        self.ids.extend(str(i) for i in ids)
        self.texts.extend(texts)

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Queries (Q, dim) -> for each, up to k hits by cosine, best first."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = normalize(np.atleast_2d(queries))
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries must have dimension {self.dim}, got {queries.shape[1]}")
        if self._index is None or not self.ids:
            return [[] for _ in range(len(queries))]
        scores, rows = self._index.search(queries, min(k, len(self.ids)))
        return [[Hit(self.ids[r], self.texts[r], float(s)) for s, r in zip(srow, rrow) if r >= 0]
                for srow, rrow in zip(scores, rows)]

    # --- persistence ------------------------------------------------------------------------
    def save(self, out_dir: str | Path) -> None:
        if self._index is None:
            raise ValueError("cannot save an empty index")
        with atomic_directory(out_dir) as tmp:
            faiss.write_index(self._index, str(tmp / "index.faiss"))
            pq.write_table(pa.table({"id": self.ids, "text": self.texts}), tmp / "table.parquet")
            meta = {"format_version": 1, "kind": self.resolved_kind, "dim": self.dim, "count": len(self.ids),
                    "model_fingerprint": self.fingerprint, "index_sha256": _sha256(tmp / "index.faiss"),
                    "hnsw_m": self.hnsw_m, "ef_search": self.ef_search, "nprobe": self.nprobe}
            (tmp / "index.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, index_dir: str | Path, expected_fingerprint: str | None = None) -> VectorIndex:
        index_dir = Path(index_dir)
        meta_path = index_dir / "index.json"
        if not meta_path.is_file():
            raise IndexLoadError(f"'{index_dir}' is not an index directory (no index.json)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            dim, fingerprint, count = int(meta["dim"]), str(meta["model_fingerprint"]), int(meta["count"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise IndexLoadError(f"{meta_path}: damaged index metadata ({exc})") from None
        if expected_fingerprint is not None and fingerprint != expected_fingerprint:
            raise IndexLoadError(
                f"index '{index_dir}' was built with another model (fingerprint {fingerprint[:12]}, "
                f"the loaded model is {expected_fingerprint[:12]}); rebuild it with `bert4ray index`")
        faiss_path = index_dir / "index.faiss"
        if not faiss_path.is_file() or _sha256(faiss_path) != meta.get("index_sha256"):
            raise IndexLoadError(f"{faiss_path}: index file is missing or damaged (checksum mismatch)")
        try:
            table = pq.read_table(index_dir / "table.parquet")
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for unreadable files
            raise IndexLoadError(f"{index_dir / 'table.parquet'}: unreadable ({exc})") from None
        index = faiss.read_index(str(faiss_path))
        if index.ntotal != count or table.num_rows != count or index.d != dim:
            raise IndexLoadError(f"index '{index_dir}' is inconsistent: {index.ntotal} vectors, "
                              f"{table.num_rows} table rows, {count} expected")
        out = cls(dim, fingerprint, kind=meta.get("kind", "flat"), hnsw_m=meta.get("hnsw_m", 32),
                  ef_search=meta.get("ef_search", 256), nprobe=meta.get("nprobe", 16))
        if isinstance(index, faiss.IndexHNSWFlat):
            index.hnsw.efSearch = out.ef_search
        if isinstance(index, faiss.IndexIVF):
            index.nprobe = out.nprobe
        out._index = index
        out.ids = [str(x) for x in table.column("id").to_pylist()]
        out.texts = table.column("text").to_pylist()
        return out
