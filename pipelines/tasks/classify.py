"""`classify`: a [CLS] classifier on `{"text", "label"}` rows (optionally a text pair).

The label names come from the recipe (`labels:`) or, if not given, from the sorted distinct
labels of the data; they are written into the exported model's config (id2label). Evaluation
reports accuracy, macro-F1 and the accuracy of always answering the majority class.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from pipelines.tasks import Task, check_text_field, register


def macro_f1(pred: list[int], gold: list[int], num_labels: int) -> float:
    """Unweighted mean over classes of F1 = 2PR/(P+R); a class never predicted nor present scores 0."""
    scores = []
    for c in range(num_labels):
        tp = sum(1 for p, g in zip(pred, gold) if p == c and g == c)
        fp = sum(1 for p, g in zip(pred, gold) if p == c and g != c)
        fn = sum(1 for p, g in zip(pred, gold) if p != c and g == c)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / num_labels


@register
class ClassifyTask(Task):
    name = "classify"

    @dataclass
    class Options:
        text_field: str = "text"
        pair_field: str | None = None
        """Optional second text (sentence-pair classification)."""
        label_field: str = "label"
        labels: list[str] = field(default_factory=list)
        """Class names in id order; empty = the sorted distinct labels found in the data."""
        attribution_samples: int = 16
        """Validation texts explained by Integrated Gradients after training (attributions.html in
        the MLflow run); 0 = none."""

    @property
    def report_rows(self) -> int:
        return self.options.attribution_samples if not self.options.pair_field else 0

    def export_report(self, model_dir, rows: list[dict]) -> tuple[dict[str, float], dict[str, str]]:
        """Integrated Gradients (50 Gauss-Legendre steps, [PAD] baseline, predicted class) of the
        first validation texts: the heat-map page and the spread of the completeness deltas."""
        if not rows:
            return {}, {}
        from components.attribution import Attributor
        from components.attribution_html import render_html
        results = Attributor.from_pretrained(model_dir).attribute_batch(
            [r[self.options.text_field] for r in rows], n_steps=50, max_length=128)
        deltas = sorted(r.delta for r in results)
        metrics = {"attribution_delta_max": deltas[-1], "attribution_delta_median": deltas[len(deltas) // 2]}
        return metrics, {"attributions.html": render_html(results, title="Validation attributions")}

    def check_row(self, row: dict) -> str | None:
        o = self.options
        error = check_text_field(row, o.text_field)
        if error is None and o.pair_field:
            error = check_text_field(row, o.pair_field)
        if error:
            return error
        if o.label_field not in row:
            return f"missing field '{o.label_field}'"
        label = row[o.label_field]
        if isinstance(label, bool) or not isinstance(label, str | int):
            return f"field '{o.label_field}' must be a string or an integer, got {type(label).__name__}"
        if o.labels and str(label) not in o.labels:
            return f"label {label!r} is not one of {o.labels}"
        return None

    def texts(self, row: dict) -> list[str]:
        o = self.options
        return [row[o.text_field]] + ([row[o.pair_field]] if o.pair_field else [])

    def prepare(self, dataset) -> None:
        labels = list(self.options.labels)
        if not labels:
            key = self.options.label_field
            found = dataset.map(lambda r: {"label": str(json.loads(r["record"])[key])}).unique("label")
            labels = sorted(found)
        if len(labels) < 2:
            raise ValueError(f"classification needs at least 2 labels, the data has {labels}")
        self.meta["labels"] = labels

    def model_overrides(self) -> dict:
        return {"num_labels": len(self.meta["labels"]), "labels": list(self.meta["labels"])}

    def encode(self, row: dict, tokenizer, max_length: int) -> dict:
        o = self.options
        ids, seg = tokenizer.encode(row[o.text_field], row[o.pair_field] if o.pair_field else None,
                                    max_length=max_length)
        label = str(row[o.label_field])
        if label not in self.meta["labels"]:
            raise ValueError(f"label {label!r} was not seen in the training data ({self.meta['labels']})")
        return {"input_ids": ids, "segment_ids": seg, "label": self.meta["labels"].index(label)}

    def collate(self, rows: list[dict], tokenizer, generator: torch.Generator) -> dict[str, torch.Tensor]:
        batch = tokenizer.pad([(r["input_ids"], r["segment_ids"]) for r in rows])
        return {"input_ids": batch.input_ids, "segment_ids": batch.segment_ids,
                "attention_mask": batch.attention_mask,
                "labels": torch.tensor([r["label"] for r in rows], dtype=torch.long)}

    def loss_fn(self, model, batch: dict, inputs_embeds: torch.Tensor | None) -> dict[str, torch.Tensor]:
        out = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"],
                    mask_mode=self.mask_mode, return_logits=False, inputs_embeds=inputs_embeds)
        loss = F.cross_entropy(out.class_logits.float(), batch["labels"])
        return {"loss": loss, "classify": loss, "logits": out.class_logits}        # VAT's distribution

    @torch.no_grad()
    def evaluate(self, model, batches: Iterable[dict], tokenizer) -> dict[str, float]:
        pred, gold, total = [], [], 0.0
        for batch in batches:
            out = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"],
                        mask_mode=self.mask_mode, return_logits=False)
            logits = out.class_logits.float()
            total += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
            pred += logits.argmax(-1).tolist()
            gold += batch["labels"].tolist()
        if not gold:
            return {}
        n = len(self.meta["labels"])
        majority = max(gold.count(c) for c in range(n)) / len(gold)
        return {"loss": total / len(gold), "accuracy": sum(p == g for p, g in zip(pred, gold)) / len(gold),
                "macro_f1": macro_f1(pred, gold, n), "majority_accuracy": majority}
