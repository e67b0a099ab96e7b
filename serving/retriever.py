"""Retrieval and embeddings: the plain logic behind /v1/search and /v1/embeddings."""

from __future__ import annotations

from pathlib import Path

from components.index import VectorIndex
from components.simbert import SimBERT
from serving.loaded_model import LoadedModel


class Retriever(LoadedModel):
    """Embeds texts with a SimBERT model and searches a FAISS index built with the same model."""
    kind = "simbert-encoder"

    def __init__(self, model_dir: str | Path, index_dir: str | Path | None = None, max_length: int = 64,
                 device: str | None = None, dtype: str | None = None):
        super().__init__(model_dir)
        self.encoder = SimBERT.from_pretrained(self.model_dir, max_length=max_length, device=device, dtype=dtype)
        self.index = VectorIndex.load(index_dir, expected_fingerprint=self.fingerprint) if index_dir else None

    def info(self) -> dict:
        return {**super().info(), "dimensions": self.dimensions,
                "index_size": len(self.index) if self.index is not None else None}

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
