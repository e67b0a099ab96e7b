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
            rows = torch.arange(len(last), device=last.device)
            self.logits = model.lm_logits(out.last_hidden_state[rows, last])   # (B, V)
        else:
            # to the host on purpose: the no-cache path (a comparison baseline) keeps plain lists
            self.rows = [(ids[m.bool()].tolist(), seg[m.bool()].tolist())
                         for ids, seg, m in zip(input_ids, segment_ids, attention_mask)]
            self.logits = self._recompute()

    def _recompute(self) -> torch.Tensor:
        T = max(len(r[0]) for r in self.rows)
        pad = [(T - len(r_ids)) for r_ids, _ in self.rows]
        device = self.model.device
        ids, seg, mask = (torch.tensor(x, dtype=torch.long, device=device) for x in (
            [r_ids + [0] * p for (r_ids, _), p in zip(self.rows, pad)],
            [r_seg + [0] * p for (_, r_seg), p in zip(self.rows, pad)],
            [[1] * len(r_ids) + [0] * p for (r_ids, _), p in zip(self.rows, pad)]))
        out = self.model(ids, seg, mask, mask_mode=self.mask_mode, return_logits=False)
        last = mask.sum(1) - 1
        return self.model.lm_logits(out.last_hidden_state[torch.arange(len(last), device=device), last])

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
        return torch.ones(segment_ids.shape[0], dtype=torch.long, device=segment_ids.device)
    last = attention_mask.sum(1) - 1
    return segment_ids[torch.arange(segment_ids.shape[0], device=segment_ids.device), last].long()


def model_device(model) -> torch.device:
    """The device of a model's weights (Transformer.device, or its first parameter's)."""
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def prepare(model, input_ids, segment_ids, attention_mask, config, eos_token_id, target_segment_id, mask_mode):
    """The checked inputs, on the model's device (inputs built elsewhere are moved there):
    (input_ids, segment_ids, attention_mask, target segment per input)."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    device = model_device(model)
    input_ids = input_ids.to(device)
    segment_ids = torch.zeros_like(input_ids) if segment_ids is None else segment_ids.to(device)
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    if not 0 <= eos_token_id < model.config.vocab_size:
        raise ValueError(f"eos_token_id {eos_token_id} is outside the vocabulary")
    if bool((attention_mask.sum(1) == 0).any()):
        raise ValueError("every input needs at least one token")
    config.validate_for(model.config, int(attention_mask.sum(1).max()))
    if target_segment_id is None:
        target_segment_id = default_target_segment(segment_ids, attention_mask, mask_mode)
    target = torch.as_tensor(target_segment_id, dtype=torch.long, device=input_ids.device)
    target = target.expand(input_ids.shape[0]).clone() if target.dim() == 0 else target
    if target.shape != (input_ids.shape[0],):
        raise ValueError("target_segment_id must be an int or one id per input")
    if int(target.max()) >= model.config.type_vocab_size:
        raise ValueError(f"target_segment_id {int(target.max())} >= type_vocab_size {model.config.type_vocab_size}")
    return input_ids, segment_ids, attention_mask, target


