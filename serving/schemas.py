"""Request and response schemas. Every request model forbids unknown fields and is strict about
JSON types (`true` is not an integer, `1.0` is not an integer, `"5"` is not a number; an integer
is a number); bounds come from `Limits`, so a deployment can tighten or loosen them in its config.
The decoding settings are derived from components' DecodingConfig (same names, types and
defaults). The OpenAI routes' fields follow OpenAI's API (nullable where it is nullable)."""

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
    # strict: no coercion between JSON types (pydantic would take `true` or `2.0` as an integer)
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False, strict=True)


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
    """Echoed in the response; must name the served model (its id or "retriever") when given."""
    encoding_format: Literal["float", "base64"] = "float"
    """base64: the little-endian float32 bytes of each vector (the openai SDK's default)."""
    dimensions: int | None = Field(None, ge=1)
    """Only the model's own size: bert4ray's vectors are not trained to be truncated."""
    user: str | None = None
    """Accepted and ignored."""

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
    embedding: list[float] | str


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int
    """Tokens the model read ([CLS] and [SEP] included), counted by its tokenizer."""
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingsUsage


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    """system and developer messages are not part of a chit-chat LM's input (dropped)."""
    content: str | list[TextPart]
    """A string, or OpenAI's content parts of type text (joined into one string)."""

    @field_validator("content")
    @classmethod
    def _joined(cls, value):
        return value if isinstance(value, str) else "".join(part.text for part in value)


class StreamOptions(Strict):
    include_usage: bool = False
    """A last chunk with the usage (and no choices) before [DONE]."""
    include_obfuscation: bool | None = None
    """Accepted; bert4ray's chunks carry no obfuscation field."""


MAX_STOPS = 4


class ChatRequest(Strict):
    """OpenAI's chat request (the fields bert4ray implements; others are refused), plus bert4ray's
    `top_k` and `consistent`. None means the default, as in OpenAI's API."""
    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    """Echoed in the response; must name the served model (its id or "chat") when given."""
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    """The older name of max_completion_tokens (both may be sent if they agree)."""
    temperature: float | None = Field(None, ge=0, le=10)
    """0: greedy; default 1."""
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1, le=1000)
    consistent: bool = False
    stop: str | list[str] | None = None
    """Up to 4 texts: the reply ends before the first of them, which is not returned."""
    n: int | None = Field(None, ge=1)
    """Choices, each decoded with its own seed (seed + index when a seed is given)."""
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    """Accepted and ignored."""

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        items = [value] if isinstance(value, str) else value or []
        if len(items) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences, got {len(items)}")
        if any(not item for item in items):
            raise ValueError("a stop sequence must not be empty")
        return value

    @model_validator(mode="after")
    def _consistent_options(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        if None not in (self.max_tokens, self.max_completion_tokens) and self.max_tokens != self.max_completion_tokens:
            raise ValueError(f"max_tokens={self.max_tokens} and max_completion_tokens={self.max_completion_tokens} "
                             "disagree; send max_completion_tokens only")
        return self

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


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
    """OpenAI's error object."""
    message: str
    type: str
    """invalid_request_error, authentication_error, server_error, ... (follows the status)."""
    param: str | None = None
    """The request field at fault, when there is one."""
    code: str
    """bert4ray's reason: invalid_request, limit_exceeded, not_deployed, model_not_found, ..."""


class ErrorResponse(BaseModel):
    error: ErrorBody
