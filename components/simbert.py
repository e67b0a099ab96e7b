"""SimBERT: one UniLM model that both retrieves (the pooled [CLS] vector) and generates similar
sentences (seq2seq over the same weights).

    sim = SimBERT.from_pretrained("runs/quickstart/model")
    vectors = sim.encode(["怎么修改密码", "密码怎么改"])        # (2, H), L2-normalised
    sim.similar("怎么修改密码", n=32, k=5)                      # [(text, cosine), ...]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from components.model import Transformer
from components.tokenizer import Tokenizer


class SimBERT:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, max_length: int = 64):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = min(max_length, model.config.max_position_embeddings)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, max_length: int = 64) -> SimBERT:
        return cls(Transformer.from_pretrained(model_dir), Tokenizer.from_pretrained(model_dir), max_length)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Texts -> (N, H) float32 L2-normalised pooled [CLS] vectors. The source of a UniLM pair
        sees only itself, so a sentence alone gives the same vector as in training pairs."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))   # similar lengths pad less
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = self.tokenizer.encode_batch([texts[i] for i in rows], max_length=self.max_length)
            pooled = self.model(batch.input_ids, batch.segment_ids, batch.attention_mask,
                                return_logits=False).pooled                  # (b, H)
            out[rows] = torch.nn.functional.normalize(pooled.float(), dim=-1).numpy()
        return out
