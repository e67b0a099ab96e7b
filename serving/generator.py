"""Paraphrase generation: the plain logic behind /v1/similar (SimBERT's gen_synonyms, batched)."""

from __future__ import annotations

from pathlib import Path

from components.simbert import SimBERT
from serving.loaded_model import LoadedModel


class Generator(LoadedModel):
    kind = "simbert-generator"

    def __init__(self, model_dir: str | Path, max_length: int = 64, device: str | None = None,
                 dtype: str | None = None):
        super().__init__(model_dir)
        self.simbert = SimBERT.from_pretrained(self.model_dir, max_length=max_length, device=device, dtype=dtype)

    def similar_many(self, items: list[dict]) -> list[list[dict] | dict]:
        """items: {"text", "n", "k", "decoding": {...}}. Requests with the same n and decoding
        settings but the seed are decoded together in one batched, cached call (each source encoded
        once, each request sampled with its own seed, so its answer does not depend on its batch).
        A group whose settings the decoder rejects answers {"error": message} for each of its
        requests and leaves the other groups of the batch unharmed."""
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            key = repr((item["n"], sorted((k, v) for k, v in item["decoding"].items() if k != "seed")))
            groups.setdefault(key, []).append(i)
        out: list[list[dict] | dict] = [[] for _ in items]
        for rows in groups.values():
            first = items[rows[0]]
            try:
                results = self.simbert.similar_many(
                    [items[i]["text"] for i in rows], n=first["n"], k=max(items[i]["k"] for i in rows),
                    decoding=first["decoding"], seeds=[items[i]["decoding"].get("seed") for i in rows])
            except ValueError as exc:
                for i in rows:
                    out[i] = {"error": str(exc)}
                continue
            for i, cands in zip(rows, results):
                out[i] = [{"text": t, "score": s} for t, s in cands[:items[i]["k"]]]
        return out
