"""The HTTP decoding settings are DecodingConfig's: same names, types and defaults (no copy to drift),
with per-request bounds and the strict validation of every request schema."""

import subprocess
import sys
from dataclasses import fields
from typing import get_args

import pytest
from pydantic import ValidationError

from components.decoding.config import DecodingConfig
from serving.schemas import DECODING_BOUNDS, NOT_PER_REQUEST, DecodingOptions, SimilarRequest


def test_decoding_options_are_decoding_configs_fields_and_defaults():
    library = {f.name: f.default for f in fields(DecodingConfig)}
    http = DecodingOptions()
    assert set(DecodingOptions.model_fields) == set(library) - set(NOT_PER_REQUEST)
    assert set(DECODING_BOUNDS) <= set(DecodingOptions.model_fields)
    for name, value in http.model_dump().items():
        if name != "max_new_tokens":                         # None: the deployment's limit
            assert value == library[name], name
    assert http.num_beams == DecodingConfig().num_beams == 4
    # What a request sends is what the decoder takes.
    sent = {**http.model_dump(), "max_new_tokens": 16}
    assert DecodingConfig.from_dict(sent) == DecodingConfig(max_new_tokens=16)


@pytest.mark.parametrize("decoding,where", [
    ({"beams": 2}, "beams"),                                 # unknown fields are refused
    ({"num_return_sequences": 2}, "num_return_sequences"),   # set by the request's n
    ({"top_p": 1.5}, "top_p"),
    ({"temperature": 0}, "temperature"),
    ({"num_beams": 17}, "num_beams"),
    ({"strategy": "nucleus"}, "strategy"),
    ({"seed": 2**63}, "seed"),
    ({"no_repeat_ngram_size": 11}, "no_repeat_ngram_size"),
])
def test_bounds_and_unknown_fields_are_refused(decoding, where):
    with pytest.raises(ValidationError) as err:
        SimilarRequest(text="天气", decoding=decoding)
    assert err.value.errors()[0]["loc"] == ("decoding", where)


def test_beam_requests_are_checked_against_the_default_beams():
    SimilarRequest(text="天气", n=4, decoding={"strategy": "beam"})
    with pytest.raises(ValidationError, match="at most num_beams=4 candidates; n=5"):
        SimilarRequest(text="天气", n=5, decoding={"strategy": "beam"})


def test_the_schemas_import_without_torch():
    code = "import sys, serving.schemas; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


MINIMAL = {"SimilarRequest": {"text": "天气"}, "SearchRequest": {"query": "天气"}, "EmbeddingsRequest": {"input": "天气"},
           "ChatRequest": {"messages": [{"role": "user", "content": "你好"}]},
           "ChatMessage": {"role": "user", "content": "你好"}, "StreamOptions": {},
           "TextPart": {"type": "text", "text": "你好"}, "DecodingOptions": {},
           "AttributeRequest": {"text": "好"}, "SegmentRequest": {"text": "好"}, "ParseRequest": {"text": "好"}}
"""A valid request of every request schema (every subclass of Strict must be here)."""


def _int_fields(model) -> list[str]:
    def has_int(kind) -> bool:
        return kind is int or any(has_int(arg) for arg in get_args(kind))
    return [name for name, field in model.model_fields.items() if has_int(field.annotation)]


def test_every_integer_field_of_every_request_schema_refuses_booleans_floats_and_strings():
    """JSON `true`, `2.0` and `"2"` are not integers (pydantic's lax mode would take them)."""
    import serving.schemas as schemas
    requests = {name: obj for name, obj in vars(schemas).items()
                if isinstance(obj, type) and issubclass(obj, schemas.Strict) and obj is not schemas.Strict}
    assert set(requests) == set(MINIMAL)
    checked = 0
    for name, model in requests.items():
        model.model_validate(MINIMAL[name])
        for field in _int_fields(model):
            model.model_validate({**MINIMAL[name], field: 2})          # a valid integer everywhere
            takes_text = str in get_args(model.model_fields[field].annotation)      # e.g. a label name
            for bad in (True, 2.0) if takes_text else (True, 2.0, "2"):
                with pytest.raises(ValidationError) as err:
                    model.model_validate({**MINIMAL[name], field: bad})
                assert err.value.errors()[0]["loc"][0] == field, (name, field, bad)
            checked += 1
    assert checked >= 16                           # n, k, steps, dimensions, max_*tokens, seeds, top_k, beams ...


def test_numbers_take_integers_but_not_booleans():
    from serving.schemas import ChatRequest
    messages = [{"role": "user", "content": "你好"}]
    assert ChatRequest.model_validate({"messages": messages, "temperature": 1}).temperature == 1.0
    with pytest.raises(ValidationError):
        ChatRequest.model_validate({"messages": messages, "temperature": True})
    with pytest.raises(ValidationError):
        SimilarRequest.model_validate({"text": "天气", "decoding": {"consistent": 1}})


def test_chat_content_parts_of_type_text_are_joined():
    from serving.schemas import ChatMessage
    parts = [{"type": "text", "text": "你"}, {"type": "text", "text": "好"}]
    assert ChatMessage.model_validate({"role": "user", "content": parts}).content == "你好"
    with pytest.raises(ValidationError):
        ChatMessage.model_validate({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]})
