"""One ordered chain of logits processors that greedy decoding, sampling and beam search all call.

Each processor maps (scores (N, V), history) to new scores, as transformers' LogitsProcessor does
with (input_ids, scores); `ProcessorChain` is the ordered list (its LogitsProcessorList). The chain
is built from a DecodingConfig, in transformers' order:

    RepetitionPenaltyLogitsProcessor -> NoRepeatNGramLogitsProcessor -> MinLengthLogitsProcessor
    -> TemperatureLogitsWarper -> TopKLogitsWarper -> TopPLogitsWarper          (the last three: sampling only)

Conventions:
- scores are the model's log-probabilities (log-softmax, or a self-terminating head's), for every
  strategy: transformers does so in beam search, while its greedy and sampling process the raw
  logits. It matters for the repetition penalty only (a log-probability is never positive, so a seen
  token's score is always multiplied by the penalty).
- the history is the tokens generated so far (EOS excluded), not the prompt: a paraphrase may reuse
  its source's words; the minimum length counts new tokens.
- temperature, top-k and top-p shape the sampling distribution only: greedy's argmax would not
  change, and beam search ranks the processed log-probabilities, as transformers' non-sampling
  decoders do.
- top-p is taken on what top-k kept (renormalised), as in transformers.
- ties (top-k): exactly k tokens, the lower id first among equal scores (transformers keeps every
  token tied with the k-th).
- consistent top-k / nucleus (Welleck et al., 2020): EOS is never filtered out.
"""

from __future__ import annotations

import torch

from components.decoding.filters import (
    NEG_INF,
    apply_mask,
    apply_repetition_penalty,
    ban_repeated_ngrams,
    top_k_mask,
    top_p_mask,
)


class History:
    """What processors may look at: each row's generated tokens (EOS excluded) and the step t
    (1 for the first new token). `device`: where `ids` is built (the scores'; None: the CPU)."""

    def __init__(self, tokens: list[list[int]], step: int, device=None):
        self.tokens, self.step, self.device = tokens, step, device
        self._ids: torch.Tensor | None = None

    @property
    def ids(self) -> torch.Tensor:
        """(N, t) token ids, rows padded with -1 (built once, on first use, in one transfer)."""
        if self._ids is None:
            width = max((len(t) for t in self.tokens), default=0)
            rows = [t + [-1] * (width - len(t)) for t in self.tokens]
            self._ids = torch.tensor(rows, dtype=torch.long, device=self.device or "cpu").reshape(len(rows), width)
        return self._ids


class LogitsProcessor:
    def __call__(self, scores: torch.Tensor, history: History) -> torch.Tensor:
        raise NotImplementedError


class RepetitionPenaltyLogitsProcessor(LogitsProcessor):
    """Tokens already generated: score / penalty when positive, score × penalty otherwise."""

    def __init__(self, penalty: float):
        self.penalty = penalty

    def __call__(self, scores, history):
        return apply_repetition_penalty(scores, history.ids.to(scores.device), self.penalty)


class NoRepeatNGramLogitsProcessor(LogitsProcessor):
    """-inf for every token that would complete an n-gram the row already generated."""

    def __init__(self, ngram_size: int):
        self.n = ngram_size

    def __call__(self, scores, history):
        return ban_repeated_ngrams(scores, history.tokens, self.n)


class MinLengthLogitsProcessor(LogitsProcessor):
    """EOS is -inf until `min_new_tokens` tokens have been generated."""

    def __init__(self, min_new_tokens: int, eos_id: int):
        self.min_new_tokens, self.eos_id = min_new_tokens, eos_id

    def __call__(self, scores, history):
        if history.step > self.min_new_tokens:
            return scores
        scores = scores.clone()
        scores[:, self.eos_id] = NEG_INF
        return scores


class TemperatureLogitsWarper(LogitsProcessor):
    def __init__(self, temperature: float):
        self.temperature = temperature

    def __call__(self, scores, history):
        return scores / self.temperature


class TopKLogitsWarper(LogitsProcessor):
    """-inf outside the k best tokens of each row; with `keep_id` (consistent decoding: EOS),
    that token keeps its score whatever its rank."""

    def __init__(self, top_k: int, keep_id: int | None = None):
        self.top_k, self.keep_id = top_k, keep_id

    def __call__(self, scores, history):
        return apply_mask(scores, top_k_mask(scores, self.top_k), self.keep_id)


class TopPLogitsWarper(LogitsProcessor):
    """-inf outside the nucleus: the shortest run of best tokens whose probability reaches top_p
    (the crossing token kept); `keep_id` as for top-k."""

    def __init__(self, top_p: float, keep_id: int | None = None):
        self.top_p, self.keep_id = top_p, keep_id

    def __call__(self, scores, history):
        return apply_mask(scores, top_p_mask(scores, self.top_p), self.keep_id)


class ProcessorChain(list):
    """Processors applied in order (an empty chain returns the scores as they are)."""

    def __call__(self, scores: torch.Tensor, history: History) -> torch.Tensor:
        for processor in self:
            scores = processor(scores, history)
        return scores


def build_chain(config, eos_id: int) -> ProcessorChain:
    """The chain a DecodingConfig asks for; processors that would change nothing are left out."""
    chain = ProcessorChain()
    if config.repetition_penalty != 1.0:
        chain.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
    if config.no_repeat_ngram_size:
        chain.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
    if config.min_new_tokens:
        chain.append(MinLengthLogitsProcessor(config.min_new_tokens, eos_id))
    if config.strategy != "sample":
        return chain
    keep = eos_id if config.consistent else None
    if config.temperature != 1.0:
        chain.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k is not None:
        chain.append(TopKLogitsWarper(config.top_k, keep))
    if config.top_p is not None and config.top_p < 1.0:
        chain.append(TopPLogitsWarper(config.top_p, keep))
    return chain
