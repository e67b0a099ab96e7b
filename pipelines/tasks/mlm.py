"""`mlm`: BERT masked-language-model pre-training (or continued pre-training) on `{"text"}` rows.

15 % of the tokens are selected for prediction; of those 80 % become [MASK], 10 % a random
token and 10 % stay as they are (Devlin et al., 2019). With `whole_word: true` the selection is
made over words (jieba segmentation for Chinese): all characters of a selected word are
predicted together, so the model cannot fill a character in from the rest of its word.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipelines.tasks import Task, check_text_field, register

IGNORE = -100


@register
class MLMTask(Task):
    name = "mlm"

    @dataclass
    class Options:
        field: str = "text"
        """Row field holding the text."""
        mask_prob: float = 0.15
        """Share of tokens (or words) selected for prediction."""
        mask_token_prob: float = 0.8
        random_token_prob: float = 0.1
        """Of the selected tokens: share replaced by [MASK], share by a random token (rest kept)."""
        whole_word: bool = False
        """Select whole words (jieba segmentation) instead of single tokens."""

        def check(self) -> None:
            if not 0.0 < self.mask_prob < 1.0:
                raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
            if self.mask_token_prob < 0 or self.random_token_prob < 0 or \
                    self.mask_token_prob + self.random_token_prob > 1.0:
                raise ValueError("mask_token_prob + random_token_prob must be within [0, 1]")

    def check_row(self, row: dict) -> str | None:
        return check_text_field(row, self.options.field)

    def texts(self, row: dict) -> list[str]:
        return [row[self.options.field]]

    # --- tokenization (Ray Data) ----------------------------------------------------------------
    def encode(self, row: dict, tokenizer, max_length: int) -> dict:
        text = row[self.options.field]
        if not self.options.whole_word:
            ids, _ = tokenizer.encode(text, max_length=max_length)
            return {"input_ids": ids, "words": list(range(len(ids)))}
        import jieba
        ids, words = [], []
        for w, word in enumerate(jieba.lcut(text)):
            pieces = tokenizer.tokenize(word)
            ids += [tokenizer.vocab.get(p, tokenizer.unk_id) for p in pieces]
            words += [w] * len(pieces)
        ids, words = ids[:max_length - 2], words[:max_length - 2]
        return {"input_ids": [tokenizer.cls_id, *ids, tokenizer.sep_id], "words": [-1, *words, -1]}

    # --- batches (workers) ----------------------------------------------------------------------
    def collate(self, rows: list[dict], tokenizer, generator: torch.Generator) -> dict[str, torch.Tensor]:
        batch = tokenizer.pad([(r["input_ids"], [0] * len(r["input_ids"])) for r in rows])
        ids = batch.input_ids                                               # (B, T)
        B, T = ids.shape
        words = torch.full((B, T), -1, dtype=torch.long)
        for i, r in enumerate(rows):
            words[i, :len(r["words"])] = torch.tensor(r["words"], dtype=torch.long)
        special = torch.isin(ids, torch.tensor(sorted(tokenizer.special_ids)))
        candidate = batch.attention_mask.bool() & ~special & (words >= 0)   # (B, T)
        selected = self._select(words, candidate, generator)
        labels = ids.masked_fill(~selected, IGNORE)
        r = torch.rand(B, T, generator=generator)
        p_mask, p_rand = self.options.mask_token_prob, self.options.random_token_prob
        to_mask = selected & (r < p_mask)
        to_rand = selected & (r >= p_mask) & (r < p_mask + p_rand)
        normal = self._normal_ids(tokenizer)
        random_ids = normal[torch.randint(len(normal), (B, T), generator=generator)]
        inputs = torch.where(to_mask, torch.full_like(ids, tokenizer.mask_id), ids)
        inputs = torch.where(to_rand, random_ids, inputs)
        return {"input_ids": inputs, "segment_ids": batch.segment_ids,
                "attention_mask": batch.attention_mask, "labels": labels}

    def _select(self, words, candidate, generator) -> torch.Tensor:
        """Pick prediction positions: each word (a token, unless whole_word) with mask_prob, at
        least one per row that has a candidate."""
        B, T = words.shape
        # One draw per (row, word id): positions of the same word share their draw.
        draws = torch.rand(B, T, generator=generator)
        word_draw = torch.gather(draws, 1, words.clamp(min=0).clamp(max=T - 1))  # (B, T)
        selected = candidate & (word_draw < self.options.mask_prob)
        for i in range(B):
            if not selected[i].any() and candidate[i].any():
                pos = candidate[i].nonzero().flatten()
                pick = pos[torch.randint(len(pos), (1,), generator=generator)]
                selected[i] = candidate[i] & (words[i] == words[i, pick])
        return selected

    def _normal_ids(self, tokenizer) -> torch.Tensor:
        cached = getattr(self, "_normal", None)
        if cached is None or len(cached) != tokenizer.vocab_size - len(tokenizer.special_ids):
            ids = torch.arange(tokenizer.vocab_size)
            cached = ids[~torch.isin(ids, torch.tensor(sorted(tokenizer.special_ids)))]
            self._normal = cached
        return cached

    # --- objective --------------------------------------------------------------------------------
    def loss_fn(self, model, batch: dict, inputs_embeds: torch.Tensor | None) -> dict[str, torch.Tensor]:
        out = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"],
                    mask_mode=self.mask_mode, return_logits=False, inputs_embeds=inputs_embeds)
        picked = batch["labels"] != IGNORE                                  # (B, T)
        # The vocabulary projection only at the predicted positions: (N, H) -> (N, V).
        logits = model.lm_logits(out.last_hidden_state[picked])
        loss = F.cross_entropy(logits.float(), batch["labels"][picked])
        return {"loss": loss, "mlm": loss}

    @torch.no_grad()
    def evaluate(self, model, batches: Iterable[dict], tokenizer) -> dict[str, float]:
        total, correct, count = 0.0, 0, 0
        for batch in batches:
            out = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"],
                        mask_mode=self.mask_mode, return_logits=False)
            picked = batch["labels"] != IGNORE
            logits = model.lm_logits(out.last_hidden_state[picked]).float()
            target = batch["labels"][picked]
            total += float(F.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(-1) == target).sum())
            count += int(target.numel())
        if count == 0:
            return {}
        loss = total / count
        return {"mlm_loss": loss, "mlm_accuracy": correct / count, "perplexity": math.exp(min(loss, 50.0))}
