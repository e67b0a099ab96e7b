"""Batched, cached decoding: greedy, beam search, sampling with temperature / top-k / nucleus,
their consistent variants, repetition controls, and self-terminating output layers. All three
strategies call one ordered chain of logits processors (processors.py).

The exports load on first use: `components.decoding.config` stays importable without torch."""

from importlib import import_module

_EXPORTS = {
    "components.decoding.config": ["DecodingConfig"],
    "components.decoding.filters": ["filter_logits", "top_k_mask", "top_p_mask"],
    "components.decoding.decode": ["Generation", "generate", "non_termination_ratio", "stream_generate"],
    "components.decoding.processors": ["History", "LogitsProcessor", "ProcessorChain", "build_chain",
                                       "RepetitionPenaltyLogitsProcessor", "NoRepeatNGramLogitsProcessor",
                                       "MinLengthLogitsProcessor", "TemperatureLogitsWarper",
                                       "TopKLogitsWarper", "TopPLogitsWarper"],
    "components.decoding.termination": ["termination_log_probs", "termination_nll"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["DecodingConfig", "Generation", "generate", "stream_generate", "non_termination_ratio",
           "filter_logits", "top_k_mask", "top_p_mask", "termination_log_probs", "termination_nll",
           "History", "LogitsProcessor", "ProcessorChain", "build_chain", "RepetitionPenaltyLogitsProcessor",
           "NoRepeatNGramLogitsProcessor", "MinLengthLogitsProcessor", "TemperatureLogitsWarper",
           "TopKLogitsWarper", "TopPLogitsWarper"]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'components.decoding' has no attribute {name!r}")
