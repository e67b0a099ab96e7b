"""Decoding settings, validated before any computation."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields

STRATEGIES = ("greedy", "beam", "sample")


@dataclass
class DecodingConfig:
    strategy: str = "sample"
    """`greedy`, `beam` or `sample`."""
    max_new_tokens: int = 32
    min_new_tokens: int = 0
    """EOS is forbidden before this many new tokens."""
    num_return_sequences: int = 1
    """Outputs per input: samples for `sample`, best beams for `beam` (<= num_beams)."""
    num_beams: int = 4
    length_penalty: float = 1.0
    """Beam hypotheses are ranked by sum log p / length ** length_penalty."""
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    """Nucleus: the smallest set of most probable tokens whose mass reaches top_p (the token that
    crosses it is kept)."""
    consistent: bool = False
    """Consistent top-k / nucleus (Welleck et al., 2020): EOS is never filtered out."""
    repetition_penalty: float = 1.0
    """> 1 discourages tokens already generated (logit / penalty if positive, × penalty if not)."""
    no_repeat_ngram_size: int = 0
    seed: int | None = None
    """Sampling seed: the same seed gives the same samples."""

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"decoding strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        _int(self, "max_new_tokens", 1)
        _int(self, "min_new_tokens", 0)
        _int(self, "num_return_sequences", 1)
        _int(self, "num_beams", 1)
        _int(self, "no_repeat_ngram_size", 0)
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens ({self.min_new_tokens}) exceeds max_new_tokens ({self.max_new_tokens})")
        if not (isinstance(self.temperature, int | float) and self.temperature > 0):
            raise ValueError(f"temperature must be > 0, got {self.temperature!r} (use strategy 'greedy' for argmax)")
        if self.top_k is not None:
            _int(self, "top_k", 1)
        check_seed(self.seed)
        if self.top_p is not None and not (isinstance(self.top_p, int | float) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        if self.strategy == "beam" and self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences ({self.num_return_sequences}) cannot exceed "
                             f"num_beams ({self.num_beams})")
        if self.strategy == "greedy" and self.num_return_sequences > 1:
            raise ValueError("greedy decoding returns one sequence per input; use 'sample' or 'beam' for more")

    def validate_for(self, model_config, prefix_length: int) -> None:
        """Reject settings the model cannot run: positions beyond max_position_embeddings."""
        limit = model_config.max_position_embeddings
        if prefix_length + self.max_new_tokens > limit:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} after an input of {prefix_length} tokens "
                             f"exceeds the model's max_position_embeddings={limit}")

    @classmethod
    def from_dict(cls, values: dict | None) -> DecodingConfig:
        """From a request or recipe dict; None values mean "default"; unknown keys are errors."""
        names = [f.name for f in fields(cls)]
        kwargs = {}
        for key, value in (values or {}).items():
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                raise ValueError(f"unknown decoding setting '{key}'" + (f"; did you mean '{close[0]}'?" if close else ""))
            if value is not None:
                kwargs[key] = value
        return cls(**kwargs)


def _int(cfg, name: str, minimum: int) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_seed(seed) -> None:
    """A sampling seed is None or an integer in [0, 2**63) (what torch generators take)."""
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63):
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
