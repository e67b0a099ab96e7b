"""`simbert`: one UniLM model for similar-sentence generation and retrieval (SimBERT).

Rows are groups of sentences with the same meaning: `{"texts": [s1, s2, ...]}` or SimBERT's own
`{"text": s, "synonyms": [...]}` (LCQMC/BQ-style pair files are converted by `bert4ray data`).
Each group contributes two adjacent rows to a batch: ([CLS] a [SEP] b [SEP]) and ([CLS] b [SEP] a [SEP])
for a random pair (a, b) of its sentences. The loss is

    seq2seq_weight · UniLM cross-entropy on the target tokens (final [SEP] included)
  + contrastive_weight · in-batch cross-entropy over scaled cosines of the pooled [CLS] vectors

and the source of a UniLM pair sees only itself, so the [CLS] vector of a pair is the retrieval
vector of its first sentence alone. Evaluation: retrieval top-1 / top-5 over the validation groups
(each sentence queries all others; a hit is a sentence of its own group).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from components.losses import in_batch_contrastive_loss, seq2seq_loss
from pipelines.tasks import Task, register


def group_texts(row: dict) -> list[str] | None:
    if isinstance(row.get("texts"), list):
        return row["texts"]
    if "text" in row and isinstance(row.get("synonyms"), list):
        return [row["text"], *row["synonyms"]]
    return None


@register
class SimBERTTask(Task):
    name = "simbert"
    mask_mode = "unilm"
    generates = True

    @dataclass
    class Options:
        seq2seq_weight: float = 1.0
        contrastive_weight: float = 1.0
        similarity_scale: float = 30.0
        """Scale of the cosine similarities in the contrastive loss."""

    # --- driver side -------------------------------------------------------------------------
    def check_row(self, row: dict) -> str | None:
        texts = group_texts(row)
        if texts is None:
            return "missing field 'texts' (or 'text' with 'synonyms')"
        usable = [t for t in texts if isinstance(t, str) and t.strip()]
        if len(usable) != len(texts):
            return "every sentence of a group must be a non-empty string"
        if len(set(usable)) < 2:
            return "a group needs at least two different sentences"
        return None

    def texts(self, row: dict) -> list[str]:
        return list(group_texts(row))

    def model_overrides(self) -> dict:
        return {"pooler_activation": "linear"}

    # --- tokenization (Ray Data) -------------------------------------------------------------
    def encode(self, row: dict, tokenizer, max_length: int) -> dict:
        per_sentence = max(1, (max_length - 3) // 2)          # a pair must fit: [CLS] a [SEP] b [SEP]
        tokens, lengths = [], []
        for text in dict.fromkeys(group_texts(row)):         # unique, in order
            ids = tokenizer.encode(text, max_length=per_sentence + 2)[0][1:-1]
            tokens += ids
            lengths.append(len(ids))
        return {"tokens": tokens, "lengths": lengths}

    # --- workers -----------------------------------------------------------------------------
    @staticmethod
    def _sentences(row: dict) -> list[list[int]]:
        out, start = [], 0
        for n in row["lengths"]:
            out.append(list(row["tokens"][start:start + n]))
            start += n
        return out

    def collate(self, rows: list[dict], tokenizer, generator: torch.Generator) -> dict[str, torch.Tensor]:
        cls, sep = tokenizer.cls_id, tokenizer.sep_id
        pairs, singles, groups = [], [], []
        for g, row in enumerate(rows):
            sents = self._sentences(row)
            i, j = torch.randperm(len(sents), generator=generator)[:2].tolist()
            a, b = sents[i], sents[j]
            for src, tgt in ((a, b), (b, a)):
                pairs.append(([cls, *src, sep, *tgt, sep], [0] * (len(src) + 2) + [1] * (len(tgt) + 1)))
            for s in sents:                               # every sentence alone, for retrieval evaluation
                singles.append(([cls, *s, sep], [0] * (len(s) + 2)))
                groups.append(g)
        batch = tokenizer.pad(pairs)
        alone = tokenizer.pad(singles)
        return {"input_ids": batch.input_ids, "segment_ids": batch.segment_ids,
                "attention_mask": batch.attention_mask, "single_ids": alone.input_ids,
                "single_mask": alone.attention_mask, "single_group": torch.tensor(groups)}

    def loss_fn(self, model, batch: dict, inputs_embeds: torch.Tensor | None) -> dict[str, torch.Tensor]:
        o = self.options
        out = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"], mask_mode="unilm",
                    inputs_embeds=inputs_embeds)
        s2s = seq2seq_loss(out.logits, batch["input_ids"], batch["segment_ids"], batch["attention_mask"])
        con = in_batch_contrastive_loss(out.pooled, o.similarity_scale)
        return {"loss": o.seq2seq_weight * s2s + o.contrastive_weight * con, "seq2seq": s2s,
                "contrastive": con, "logits": out.logits}

    @torch.no_grad()
    def evaluate(self, model, batches: Iterable[dict], tokenizer) -> dict[str, float]:
        vectors, groups, s2s, con, n = [], [], 0.0, 0.0, 0
        offset = 0
        for batch in batches:
            parts = self.loss_fn(model, batch, None)
            s2s += float(parts["seq2seq"])
            con += float(parts["contrastive"])
            n += 1
            out = model(batch["single_ids"], attention_mask=batch["single_mask"], return_logits=False)
            vectors.append(F.normalize(out.pooled.float(), dim=-1))
            groups.append(batch["single_group"] + offset)
            offset += int(batch["single_group"].max()) + 1
        if not n:
            return {}
        metrics = {"seq2seq": s2s / n, "contrastive": con / n}
        metrics.update(retrieval_accuracy(torch.cat(vectors), torch.cat(groups)))
        return metrics


def retrieval_accuracy(vectors: torch.Tensor, groups: torch.Tensor, ks=(1, 5)) -> dict[str, float]:
    """Each sentence queries all others (cosine); top-k accuracy = share of queries with a sentence
    of their own group among the k nearest. Also reports chance (the expected top-1 of a random pick)."""
    sim = vectors @ vectors.T
    sim.fill_diagonal_(float("-inf"))
    same = groups[:, None] == groups[None, :]
    same.fill_diagonal_(False)
    has_partner = same.any(dim=1)
    out = {}
    for k in ks:
        top = sim.topk(min(k, len(vectors) - 1), dim=1).indices
        hit = same.gather(1, top).any(dim=1)
        out[f"top{k}"] = float(hit[has_partner].float().mean()) if has_partner.any() else 0.0
    n = len(vectors)
    out["top1_chance"] = float((same.sum(1)[has_partner].float() / (n - 1)).mean()) if has_partner.any() else 0.0
    return out
