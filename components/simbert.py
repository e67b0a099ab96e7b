"""SimBERT: one UniLM model that both retrieves (the pooled [CLS] vector) and generates similar
sentences (seq2seq over the same weights).

    sim = SimBERT.from_pretrained("runs/quickstart/model")
    vectors = sim.encode(["怎么修改密码", "密码怎么改"])        # (2, H), L2-normalised
    sim.similar("怎么修改密码", n=32, k=5)                      # [(text, cosine), ...]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from components.decoding import DecodingConfig, generate
from components.model import Transformer
from components.tokenizer import Tokenizer


class SimBERT:
    def __init__(self, model: Transformer, tokenizer: Tokenizer, max_length: int = 64):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = min(max_length, model.config.max_position_embeddings)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, max_length: int = 64, device=None, dtype=None) -> SimBERT:
        """`device` / `dtype`: where and in which type the weights live (Transformer.from_pretrained)."""
        return cls(Transformer.from_pretrained(model_dir, device=device, dtype=dtype),
                   Tokenizer.from_pretrained(model_dir), max_length)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Texts -> (N, H) float32 L2-normalised pooled [CLS] vectors. The source of a UniLM pair
        sees only itself, so a sentence alone gives the same vector as in training pairs. Batches
        are built on the model's device; the norm is taken in float32 whatever the model's dtype."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))   # similar lengths pad less
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = self.tokenizer.encode_batch([texts[i] for i in rows], max_length=self.max_length,
                                                device=self.model.device)
            pooled = self.model(batch.input_ids, batch.segment_ids, batch.attention_mask,
                                return_logits=False).pooled                  # (b, H)
            # to the host on purpose: the caller gets numpy (FAISS, JSON, Arrow all want host memory)
            out[rows] = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()
        return out

    @torch.no_grad()
    def generate(self, texts: list[str], n: int = 1, decoding: dict | DecodingConfig | None = None,
                 seeds: list[int | None] | None = None) -> list[list[str]]:
        """n generated similar sentences per text (duplicates and the input included): one batched,
        cached decode in which every source is encoded once. `seeds`: one sampling seed per text
        (in place of the decoding seed), each text sampled as if alone."""
        config = decoding if isinstance(decoding, DecodingConfig) else DecodingConfig.from_dict(
            {"max_new_tokens": self.max_length, **(decoding or {})})
        config = dataclasses.replace(config, num_return_sequences=n)
        if config.strategy == "greedy" and n > 1:
            config = dataclasses.replace(config, strategy="sample")
        batch = self.tokenizer.encode_batch(texts, max_length=self.max_length, device=self.model.device)
        limit = self.model.config.max_position_embeddings - int(batch.attention_mask.sum(1).max())
        if config.max_new_tokens > limit:
            config = dataclasses.replace(config, max_new_tokens=max(1, limit))
        gens = generate(self.model, batch.input_ids, batch.segment_ids, batch.attention_mask, config,
                        eos_token_id=self.tokenizer.sep_id, mask_mode="unilm", target_segment_id=1, seeds=seeds)
        return [[self.tokenizer.decode(g.token_ids) for g in row] for row in gens]

    def similar_many(self, texts: list[str], n: int = 32, k: int = 10, decoding: dict | None = None,
                     keep_input: bool = False, seeds: list[int | None] | None = None
                     ) -> list[list[tuple[str, float]]]:
        """SimBERT's gen_synonyms for many texts at once: n candidates each from one batched decode,
        duplicates and (unless keep_input) the input itself removed, reranked by cosine similarity
        to the input, top k returned as (text, cosine), best first. `seeds` as in `generate`."""
        settings = {"strategy": "sample", "top_k": 5, **(decoding or {})}
        candidates = self.generate(texts, n, settings, seeds=seeds)
        pools = []
        for text, cands in zip(texts, candidates):
            seen = dict.fromkeys(c for c in cands if c.strip() and (keep_input or c != text))
            pools.append(list(seen))
        flat = [c for pool in pools for c in pool]
        vectors = self.encode(list(texts) + flat) if flat else self.encode(list(texts))
        sources, cand_vecs = vectors[:len(texts)], vectors[len(texts):]
        out, start = [], 0
        for i, pool in enumerate(pools):
            vecs = cand_vecs[start:start + len(pool)]
            start += len(pool)
            scores = vecs @ sources[i] if len(pool) else np.zeros(0)
            order = np.argsort(-scores, kind="stable")[:k]
            out.append([(pool[j], float(scores[j])) for j in order])
        return out

    def similar(self, text: str, n: int = 32, k: int = 10, decoding: dict | None = None) -> list[tuple[str, float]]:
        return self.similar_many([text], n, k, decoding)[0]
