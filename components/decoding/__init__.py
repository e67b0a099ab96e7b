"""Batched, cached decoding: greedy, beam search, sampling with temperature / top-k / nucleus,
their consistent variants, repetition controls, and self-terminating output layers."""

from components.decoding.config import DecodingConfig
from components.decoding.filters import filter_logits, top_k_mask, top_p_mask
from components.decoding.generate import Generation, generate, non_termination_ratio, stream_generate
from components.decoding.termination import termination_log_probs, termination_nll

__all__ = ["DecodingConfig", "Generation", "generate", "stream_generate", "non_termination_ratio",
           "filter_logits", "top_k_mask", "top_p_mask", "termination_log_probs", "termination_nll"]
