"""`cosent`: sentence-similarity fine-tuning on graded pairs (STS-B style) with the CoSENT loss.

Rows are `{"text_a": ..., "text_b": ..., "score": number}` (`bert4ray data pairs --scores` writes
them from a `s1 \\t s2 \\t score` file). Each sentence is encoded alone, [CLS] s [SEP], and its pooled
[CLS] vector is the sentence vector: the same vector as SimBERT's retrieval vector (a UniLM source
sees only itself), so a SimBERT model fine-tuned here keeps serving /similar and `bert4ray sts`, and
any BERT-format model becomes a retrieval model. The loss orders the batch's pair cosines as the gold
scores order them (components.losses.cosent_loss). Evaluation: Spearman's rho of cosine against
score on the validation pairs, next to the same correlation for the character 1-2-gram TF-IDF cosine
of the sentences as the tokenizer sees them (IDF from the validation sentences themselves): the
lexical floor such a model has to beat (`bert4ray sts` computes it with the train set's IDF).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from components.losses import cosent_loss
from components.textsim import TfIdf, char_ngrams, spearman
from pipelines.tasks import Task, check_text_field, register


@register
class CoSENTTask(Task):
    name = "cosent"

    @dataclass
    class Options:
        text_a_field: str = "text_a"
        text_b_field: str = "text_b"
        score_field: str = "score"
        scale: float = 20.0
        """Multiplies the cosine differences inside the loss (CoSENT's lambda)."""

        def check(self) -> None:
            if not self.scale > 0:
                raise ValueError(f"scale must be > 0, got {self.scale}")

    # --- driver side -------------------------------------------------------------------------
    def check_row(self, row: dict) -> str | None:
        o = self.options
        error = check_text_field(row, o.text_a_field) or check_text_field(row, o.text_b_field)
        if error:
            return error
        score = row.get(o.score_field)
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            return f"field '{o.score_field}' must be a finite number, got {score!r}"
        return None

    def texts(self, row: dict) -> list[str]:
        return [row[self.options.text_a_field], row[self.options.text_b_field]]

    def model_overrides(self) -> dict:
        return {"pooler_activation": "linear"}          # as SimBERT's retrieval vector

    # --- tokenization (Ray Data) -------------------------------------------------------------
    def encode(self, row: dict, tokenizer, max_length: int) -> dict:
        o = self.options
        a = tokenizer.encode(row[o.text_a_field], max_length=max_length)[0]
        b = tokenizer.encode(row[o.text_b_field], max_length=max_length)[0]
        return {"ids_a": a, "ids_b": b, "score": float(row[o.score_field])}

    # --- workers -----------------------------------------------------------------------------
    def collate(self, rows: list[dict], tokenizer, generator: torch.Generator) -> dict[str, torch.Tensor]:
        # One batch of single sentences, a0 b0 a1 b1 ...: one forward pass (and one inputs_embeds
        # tensor for the embedding-space regularizers) covers both sides of every pair.
        singles = [(list(ids), [0] * len(ids)) for r in rows for ids in (r["ids_a"], r["ids_b"])]
        batch = tokenizer.pad(singles)
        return {"input_ids": batch.input_ids, "segment_ids": batch.segment_ids,
                "attention_mask": batch.attention_mask,
                "scores": torch.tensor([r["score"] for r in rows], dtype=torch.float32)}

    def _cosines(self, model, batch: dict, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
        out = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"],
                    return_logits=False, inputs_embeds=inputs_embeds)
        v = F.normalize(out.pooled.float(), dim=-1)
        return (v[0::2] * v[1::2]).sum(-1)                                  # (pairs,)

    def loss_fn(self, model, batch: dict, inputs_embeds: torch.Tensor | None) -> dict[str, torch.Tensor]:
        loss = cosent_loss(self._cosines(model, batch, inputs_embeds), batch["scores"], self.options.scale)
        return {"loss": loss, "cosent": loss}

    @torch.no_grad()
    def evaluate(self, model, batches: Iterable[dict], tokenizer) -> dict[str, float]:
        cosines, scores, losses, tfidf_pairs = [], [], [], []
        for batch in batches:
            cos = self._cosines(model, batch, None)
            losses.append(float(cosent_loss(cos, batch["scores"], self.options.scale)))
            cosines += cos.tolist()
            scores += batch["scores"].tolist()
            texts = [tokenizer.decode(ids.tolist()) for ids in batch["input_ids"]]
            tfidf_pairs += list(zip(texts[0::2], texts[1::2]))
        if len(scores) < 2:
            return {}
        idf = TfIdf.fit(char_ngrams(t) for pair in tfidf_pairs for t in pair)
        lexical = [idf.cosine(char_ngrams(a), char_ngrams(b)) for a, b in tfidf_pairs]
        return {"cosent": sum(losses) / len(losses), "spearman": spearman(cosines, scores),
                "tfidf_spearman": spearman(lexical, scores)}
