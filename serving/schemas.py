"""Request and response schemas. Every request model forbids unknown fields; bounds come from
`Limits`, so a deployment can tighten or loosen them in its config. The decoding settings are
derived from components' DecodingConfig (same names, types and defaults)."""

from __future__ import annotations

from dataclasses import fields
from typing import Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from components.decoding.config import STRATEGIES, DecodingConfig


class Limits(BaseModel):
    """Bounds on what one request may ask for."""
    model_config = ConfigDict(extra="forbid")
    max_text_chars: int = Field(256, ge=1)
    max_n: int = Field(64, ge=1)
    max_k: int = Field(100, ge=1)
    max_batch_inputs: int = Field(64, ge=1)
    max_new_tokens: int = Field(64, ge=1)
    max_turns: int = Field(16, ge=1)
    max_steps: int = Field(200, ge=1)
    max_body_bytes: int = Field(65536, ge=1024)
    timeout_s: float = Field(30.0, gt=0)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


# Per-request bounds on decoding settings (compute per request stays bounded); every field, type
# and default comes from components' DecodingConfig, so the HTTP defaults are the library's.
DECODING_BOUNDS: dict[str, dict] = {
    "temperature": {"gt": 0, "le": 10},
    "top_k": {"ge": 1, "le": 1000},
    "top_p": {"gt": 0, "le": 1},
    "num_beams": {"ge": 1, "le": 16},
    "max_new_tokens": {"ge": 1},
    "min_new_tokens": {"ge": 0},
    "length_penalty": {"ge": -10, "le": 10},
    "repetition_penalty": {"gt": 0, "le": 10},
    "no_repeat_ngram_size": {"ge": 0, "le": 10},
    "seed": {"ge": 0, "le": 2**63 - 1},
}
NOT_PER_REQUEST = ("num_return_sequences",)
"""Set by the request itself (`n`), not in `decoding`."""


def _decoding_fields() -> dict:
    hints = get_type_hints(DecodingConfig)
    out = {}
    for f in fields(DecodingConfig):
        if f.name in NOT_PER_REQUEST:
            continue
        kind, default = hints[f.name], f.default
        if f.name == "strategy":
            kind = Literal[STRATEGIES]
        elif f.name == "max_new_tokens":
            # None: the deployment's limit (Limits.max_new_tokens), filled in by the ingress
            kind, default = int | None, None
        out[f.name] = (kind, Field(default, **DECODING_BOUNDS.get(f.name, {})))
    return out


DecodingOptions = create_model("DecodingOptions", __base__=Strict, __module__=__name__, **_decoding_fields())
DecodingOptions.__doc__ = ("Decoding settings a client may set per request: DecodingConfig's fields and defaults "
                           "(validated again by the decoder), within DECODING_BOUNDS.")


def nonempty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


class SimilarRequest(Strict):
    text: str = Field(min_length=1)
    n: int = Field(32, ge=1)
    k: int = Field(5, ge=1)
    decoding: DecodingOptions = Field(default_factory=DecodingOptions)
    _check = field_validator("text")(nonempty)

    @model_validator(mode="after")
    def _beams_hold_n(self):
        if self.decoding.strategy == "beam" and self.n > self.decoding.num_beams:
            raise ValueError(f"beam search returns at most num_beams={self.decoding.num_beams} candidates; "
                             f"n={self.n} asks for more")
        return self


class Candidate(BaseModel):
    text: str
    score: float


class SimilarResponse(BaseModel):
    candidates: list[Candidate]


class SearchRequest(Strict):
    query: str = Field(min_length=1)
    k: int = Field(5, ge=1)
    _check = field_validator("query")(nonempty)


class SearchHit(BaseModel):
    id: str
    text: str
    score: float


class SearchResponse(BaseModel):
    hits: list[SearchHit]


class EmbeddingsRequest(Strict):
    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float"] = "float"

    @field_validator("input")
    @classmethod
    def _inputs(cls, value):
        items = [value] if isinstance(value, str) else value
        if not items:
            raise ValueError("must contain at least one text")
        for item in items:
            nonempty(item)
        return value


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float]


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: dict[str, int]


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(Strict):
    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=10)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1, le=1000)
    consistent: bool = False
    stream: bool = False
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    n: int = Field(1, ge=1, le=1)


class AttributeRequest(Strict):
    """Integrated Gradients of a classifier's decision for one text."""
    text: str = Field(min_length=1)
    target: int | str | None = None
    """Class id or label name to explain (default: the predicted class)."""
    steps: int = Field(50, ge=1)
    rule: Literal["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"] = \
        "gausslegendre"
    quantity: Literal["prob", "logit"] = "prob"
    baseline: Literal["pad", "zero"] = "pad"
    _check = field_validator("text")(nonempty)


class AttributeResponse(BaseModel):
    label: str
    prob: float
    target: str
    tokens: list[str]
    scores: list[float]
    norms: list[float]
    delta: float


class SegmentRequest(Strict):
    """Perturbed Masking word segmentation of one text."""
    text: str = Field(min_length=1)
    _check = field_validator("text")(nonempty)


class SegmentResponse(BaseModel):
    words: list[str]


class ParseRequest(Strict):
    """Perturbed Masking parse of one text: over its whitespace tokens, or its segmented words."""
    text: str = Field(min_length=1)
    dependency: Literal["eisner", "chu_liu_edmonds"] | None = None
    """Default: the model's calibrated choice, else eisner."""
    constituency: Literal["mart", "mart_block_means", "seed", "right_branching", "left_branching"] | None = None
    """Default: the model's calibrated choice, else mart (the authors' MART)."""
    _check = field_validator("text")(nonempty)


class ParseResponse(BaseModel):
    tokens: list[str]
    heads: list[int]
    """1-based head of each token, 0 = root."""
    tree: str | list
    """Binary constituency tree: a token, or a list of two subtrees (nested JSON arrays)."""


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
