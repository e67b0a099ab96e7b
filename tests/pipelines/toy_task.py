"""A task that lives outside pipelines/tasks: predict a text's first character from [CLS] with the
MLM head. Importing this module registers it; nothing else in bert4ray names it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipelines.tasks import Task, check_text_field, register


@register
class FirstCharTask(Task):
    name = "toy-first-char"
    generates = False
    causal = False

    @dataclass
    class Options:
        field: str = "text"

    def check_row(self, row: dict) -> str | None:
        return check_text_field(row, self.options.field)

    def texts(self, row: dict) -> list[str]:
        return [row[self.options.field]]

    def encode(self, row: dict, tokenizer, max_length: int) -> dict:
        ids, segs = tokenizer.encode(row[self.options.field], max_length=max_length)
        return {"input_ids": ids, "segment_ids": segs}

    def collate(self, rows: list[dict], tokenizer, generator: torch.Generator) -> dict[str, torch.Tensor]:
        batch = tokenizer.pad([(r["input_ids"], r["segment_ids"]) for r in rows])
        return {"input_ids": batch.input_ids, "segment_ids": batch.segment_ids,
                "attention_mask": batch.attention_mask}

    def _loss(self, model, batch: dict, inputs_embeds=None, reduction: str = "mean") -> torch.Tensor:
        out = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"], inputs_embeds=inputs_embeds)
        return F.cross_entropy(out.logits[:, 0].float(), batch["input_ids"][:, 1], reduction=reduction)

    def loss_fn(self, model, batch: dict, inputs_embeds: torch.Tensor | None) -> dict[str, torch.Tensor]:
        loss = self._loss(model, batch, inputs_embeds)
        return {"loss": loss, "first_char": loss}

    @torch.no_grad()
    def evaluate(self, model, batches: Iterable[dict], tokenizer) -> dict[str, float]:
        total, n = 0.0, 0
        for batch in batches:
            total += float(self._loss(model, batch, reduction="sum"))
            n += len(batch["input_ids"])
        return {"loss": total / n} if n else {}
