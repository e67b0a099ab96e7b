"""Retrieval and embeddings: the plain logic behind /v1/search and /v1/embeddings."""

from __future__ import annotations

from pathlib import Path

from components.index import VectorIndex
from components.simbert import SimBERT
from components.weights import model_fingerprint


class Retriever:
    """Embeds texts with a SimBERT model and searches a FAISS index built with the same model."""

    def __init__(self, model_dir: str | Path, index_dir: str | Path | None = None, max_length: int = 64,
                 device: str | None = None, dtype: str | None = None):
        self.model_dir = Path(model_dir)
        self.encoder = SimBERT.from_pretrained(self.model_dir, max_length=max_length, device=device, dtype=dtype)
        self.fingerprint = model_fingerprint(self.model_dir)
        self.index = VectorIndex.load(index_dir, expected_fingerprint=self.fingerprint) if index_dir else None

    @property
    def name(self) -> str:
        return self.model_dir.name

    @property
    def dimensions(self) -> int:
        return self.encoder.model.config.hidden_size

    def embed(self, texts: list[str]) -> list[dict]:
        """Each text's unit vector ("embedding") and the number of tokens the model read for it
        ("tokens": its tokenizer's ids after truncation to max_length, [CLS] and [SEP] included)."""
        vectors = self.encoder.encode(texts).tolist()
        tok, length = self.encoder.tokenizer, self.encoder.max_length
        return [{"embedding": v, "tokens": len(tok.encode(t, max_length=length)[0])} for t, v in zip(texts, vectors)]

    def search(self, queries: list[str], ks: list[int]) -> list[list[dict]]:
        """One batched encode and one index search for many queries; each keeps its own k."""
        if self.index is None:
            raise LookupError("no index is loaded: start the server with --index DIR")
        hits = self.index.search(self.encoder.encode(queries), max(ks))
        return [[{"id": h.id, "text": h.text, "score": h.score} for h in row[:k]] for row, k in zip(hits, ks)]
