"""What every decoding strategy shares: the model state of the live rows (cache or full
sequences), the next-token log-probabilities (softmax or a self-terminating head), the checked
inputs, and the result type."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from components.decoding.termination import termination_log_probs


@dataclass
class Generation:
    token_ids: list[int]            # generated tokens, EOS excluded
    finish_reason: str              # "eos" | "length"
    score: float                    # sum of the model's log-probabilities of the chosen tokens (EOS included)
    normalized_score: float
    """Beam search: the sum of the processed scores (penalties applied) / length ** length_penalty,
    its ranking; greedy and sampling: score / length."""


def non_termination_ratio(generations: list[list[Generation]] | list[Generation]) -> float:
    """Share of outputs that hit the length cap instead of ending with EOS (consistency-lm's metric)."""
    flat = [g for row in generations for g in (row if isinstance(row, list) else [row])]
    return sum(g.finish_reason == "length" for g in flat) / max(1, len(flat))


class Stepper:
    """Owns the model state of the live rows: the cache (or, without cache, the full sequences)."""

    def __init__(self, model, input_ids, segment_ids, attention_mask, mask_mode, use_cache: bool):
        self.model, self.mask_mode, self.use_cache = model, mask_mode, use_cache
        if use_cache:
            out = model(input_ids, segment_ids, attention_mask, mask_mode=mask_mode, use_cache=True,
                        return_logits=False)
            self.cache = out.cache
            last = attention_mask.sum(1) - 1                                      # last real position
            self.logits = model.lm_logits(out.last_hidden_state[torch.arange(len(last)), last])   # (B, V)
        else:
            self.rows = [(ids[m.bool()].tolist(), seg[m.bool()].tolist())
                         for ids, seg, m in zip(input_ids, segment_ids, attention_mask)]
            self.logits = self._recompute()

    def _recompute(self) -> torch.Tensor:
        T = max(len(r[0]) for r in self.rows)
        ids = torch.zeros(len(self.rows), T, dtype=torch.long)
        seg = torch.zeros_like(ids)
        mask = torch.zeros_like(ids)
        for i, (r_ids, r_seg) in enumerate(self.rows):
            ids[i, :len(r_ids)], seg[i, :len(r_ids)], mask[i, :len(r_ids)] = (
                torch.tensor(r_ids), torch.tensor(r_seg), 1)
        out = self.model(ids, seg, mask, mask_mode=self.mask_mode, return_logits=False)
        last = mask.sum(1) - 1
        return self.model.lm_logits(out.last_hidden_state[torch.arange(len(last)), last])

    def expand(self, n: int) -> None:
        if n == 1:
            return
        self.logits = self.logits.repeat_interleave(n, dim=0)
        if self.use_cache:
            self.cache = self.cache.expand(n)
        else:
            self.rows = [r for r in self.rows for _ in range(n)]

    def select(self, index: torch.Tensor) -> None:
        """Keep / reorder rows (finished rows dropped, beams reordered)."""
        self.logits = self.logits.index_select(0, index)
        if self.use_cache:
            self.cache = self.cache.select(index)
        else:
            self.rows = [(list(self.rows[i][0]), list(self.rows[i][1])) for i in index.tolist()]

    def advance(self, tokens: torch.Tensor, segments: torch.Tensor) -> None:
        """Append one token per live row and compute the next logits."""
        if self.use_cache:
            out = self.model(tokens[:, None], segments[:, None], cache=self.cache, return_logits=False)
            self.cache = out.cache
            self.logits = self.model.lm_logits(out.last_hidden_state[:, -1])
        else:
            for row, t, s in zip(self.rows, tokens.tolist(), segments.tolist()):
                row[0].append(t)
                row[1].append(s)
            self.logits = self._recompute()


def log_probs(model, logits, eos_id, step, survival):
    cfg = model.config
    if cfg.termination == "none":
        return torch.log_softmax(logits.float(), dim=-1), survival
    return termination_log_probs(logits, eos_id, cfg.termination_epsilon, cfg.termination, step, survival)


def default_target_segment(segment_ids: torch.Tensor, attention_mask: torch.Tensor, mask_mode: str) -> torch.Tensor:
    """The new tokens' segment id when the caller names none: UniLM's target segment 1 for a
    seq2seq prefix; in causal mode the segment of each prompt's last real token, so a plain
    language model continues its text with the segment ids it was trained on (all 0, usually)."""
    if mask_mode != "causal":
        return torch.ones(segment_ids.shape[0], dtype=torch.long)
    last = attention_mask.sum(1) - 1
    return segment_ids[torch.arange(segment_ids.shape[0]), last].long()


def prepare(model, input_ids, segment_ids, attention_mask, config, eos_token_id, target_segment_id, mask_mode):
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    segment_ids = torch.zeros_like(input_ids) if segment_ids is None else segment_ids
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    if not 0 <= eos_token_id < model.config.vocab_size:
        raise ValueError(f"eos_token_id {eos_token_id} is outside the vocabulary")
    if bool((attention_mask.sum(1) == 0).any()):
        raise ValueError("every input needs at least one token")
    config.validate_for(model.config, int(attention_mask.sum(1).max()))
    if target_segment_id is None:
        target_segment_id = default_target_segment(segment_ids, attention_mask, mask_mode)
    target = torch.as_tensor(target_segment_id, dtype=torch.long)
    target = target.expand(input_ids.shape[0]).clone() if target.dim() == 0 else target
    if target.shape != (input_ids.shape[0],):
        raise ValueError("target_segment_id must be an int or one id per input")
    if int(target.max()) >= model.config.type_vocab_size:
        raise ValueError(f"target_segment_id {int(target.max())} >= type_vocab_size {model.config.type_vocab_size}")
    return segment_ids, attention_mask, target


