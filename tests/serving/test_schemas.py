"""The HTTP decoding settings are DecodingConfig's: same names, types and defaults (no copy to drift),
with per-request bounds and the strict validation of every request schema."""

import subprocess
import sys
from dataclasses import fields

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
