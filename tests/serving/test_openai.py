"""The OpenAI-compatible routes as the official `openai` client uses them, against the running app
on 127.0.0.1 (tiny SimBERT + index + tiny dialogue model of tests/serving/conftest.py): its default
base64 embeddings, stop sequences, max_completion_tokens, n choices, streamed usage, typed errors;
every answer parsed by the openai package's own response types. Also the plain stop-sequence
logic of the chat capability, without Serve."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from pydantic import BaseModel

from tests.tiny_training import GROUPS

MAX_TOKENS = 24          # the session app's limits.max_new_tokens
TEXTS = [GROUPS[0][0], GROUPS[3][1], "今天天气怎么样"]


def no_unknown_fields(obj) -> None:
    """Every field we send is one the openai type declares (its models allow extras silently)."""
    if isinstance(obj, BaseModel):
        assert not obj.model_extra, (type(obj).__name__, obj.model_extra)
        for name in type(obj).model_fields:
            no_unknown_fields(getattr(obj, name))
    elif isinstance(obj, list):
        for item in obj:
            no_unknown_fields(item)


@pytest.fixture(scope="module")
def openai_client(app_url):
    from openai import OpenAI
    with OpenAI(base_url=f"{app_url}/v1", api_key="not-needed", timeout=60, max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def model_ids(app_url) -> dict[str, str]:
    from openai.types import Model
    models = httpx.get(f"{app_url}/v1/models").json()["data"]
    for m in models:                      # bert4ray's own fields (capability, fingerprint, ...) are extras
        Model.model_validate(m)
    return {m["capability"]: m["id"] for m in models}


# --- embeddings -------------------------------------------------------------------------------
def test_embeddings_with_the_sdks_defaults_and_as_floats_equal_simbert_encode(openai_client, simbert_dir,
                                                                                 model_ids):
    from openai.types import CreateEmbeddingResponse

    from components.simbert import SimBERT
    sim = SimBERT.from_pretrained(simbert_dir)                     # the app's max_length (64)
    want = sim.encode(TEXTS)
    default = openai_client.embeddings.create(model=model_ids["retriever"], input=TEXTS)    # sends base64
    floats = openai_client.embeddings.create(model="retriever", input=TEXTS, encoding_format="float")
    for out in (default, floats):
        got = np.array([d.embedding for d in out.data], dtype=np.float32)
        assert [d.index for d in out.data] == [0, 1, 2]
        np.testing.assert_allclose(got, want, atol=1e-5)
    # base64 carries the float32 values exactly: the two answers are the same numbers
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    assert default.model == model_ids["retriever"] and floats.model == "retriever"        # echoed
    tokens = sum(len(sim.tokenizer.encode(t, max_length=64)[0]) for t in TEXTS)
    assert default.usage.prompt_tokens == default.usage.total_tokens == tokens
    assert tokens != sum(len(t) for t in TEXTS)                    # not characters
    # The type describes floats (the SDK decodes base64 before it builds the object).
    raw = openai_client.embeddings.with_raw_response.create(model="retriever", input=TEXTS[0], encoding_format="float")
    no_unknown_fields(CreateEmbeddingResponse.model_validate(raw.http_response.json()))
    raw = openai_client.embeddings.with_raw_response.create(model="retriever", input=TEXTS[0])
    assert isinstance(raw.http_response.json()["data"][0]["embedding"], str)


def test_embeddings_dimensions_are_the_models_or_refused(openai_client):
    from openai import BadRequestError
    out = openai_client.embeddings.create(model="retriever", input="天气", dimensions=48, encoding_format="float")
    assert len(out.data[0].embedding) == 48
    for dims in (49, 16):                         # not Matryoshka-trained: no truncation either
        with pytest.raises(BadRequestError) as err:
            openai_client.embeddings.create(model="retriever", input="天气", dimensions=dims)
        assert err.value.code == "invalid_request" and err.value.param == "dimensions"
        assert "48" in err.value.message


def test_an_unknown_model_is_a_404(openai_client):
    from openai import NotFoundError
    with pytest.raises(NotFoundError) as err:
        openai_client.embeddings.create(model="text-embedding-3-small", input="天气")
    assert err.value.code == "model_not_found" and err.value.param == "model"
    with pytest.raises(NotFoundError):
        openai_client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "你好"}])


# --- chat ---------------------------------------------------------------------------------------
def ask(client, content: str, **options):
    return client.chat.completions.create(model="chat", messages=[{"role": "user", "content": content}],
                                          **{"max_completion_tokens": MAX_TOKENS, **options})


@pytest.fixture(scope="module")
def greedy_reply(openai_client) -> tuple[str, str]:
    """A prompt whose greedy reply (the tiny random model's) is long enough to cut."""
    for prompt in ("你好", "今天天气怎么样", "我的快递还没到", "明天会下雨吗", "谢谢"):
        text = ask(openai_client, prompt, temperature=0).choices[0].message.content
        if len(text) >= 6:
            return prompt, text
    pytest.fail("no prompt gave the tiny chat model a reply of 6 characters")


def test_stop_ends_the_reply_before_the_stop_text(openai_client, greedy_reply):
    from openai.types.chat import ChatCompletion
    prompt, full = greedy_reply
    stop = full[3:5]
    before = full[:full.index(stop)]
    out = ask(openai_client, prompt, temperature=0, stop=[stop, "never-in-a-reply"])
    assert out.choices[0].message.content == before and out.choices[0].finish_reason == "stop"
    assert ask(openai_client, prompt, temperature=0, stop=stop).choices[0].message.content == before
    no_unknown_fields(ChatCompletion.model_validate(out.model_dump()))
    assert out.usage.completion_tokens < ask(openai_client, prompt, temperature=0).usage.completion_tokens
    streamed = openai_client.chat.completions.create(model="chat", messages=[{"role": "user", "content": prompt}],
                                                     temperature=0, stop=stop, stream=True)
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == before
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]


def test_max_completion_tokens_and_the_older_max_tokens(openai_client, greedy_reply):
    from openai import BadRequestError
    prompt, _ = greedy_reply
    new = ask(openai_client, prompt, temperature=0, max_completion_tokens=3)
    old = openai_client.chat.completions.create(model="chat", messages=[{"role": "user", "content": prompt}],
                                                temperature=0, max_tokens=3)
    assert new.choices[0].message.content == old.choices[0].message.content
    assert new.usage.completion_tokens <= 3 and new.choices[0].finish_reason in ("length", "stop")
    if new.choices[0].finish_reason == "length":
        assert new.usage.completion_tokens == 3
    with pytest.raises(BadRequestError) as err:
        ask(openai_client, prompt, max_completion_tokens=MAX_TOKENS + 1)
    assert err.value.code == "limit_exceeded" and err.value.param == "max_completion_tokens"


def test_n_choices_each_with_its_own_seed(openai_client):
    two = ask(openai_client, "你好", n=2, seed=5, temperature=1.0, user="someone")
    assert [c.index for c in two.choices] == [0, 1]
    for i, choice in enumerate(two.choices):        # choice i is what seed + i gives alone
        alone = ask(openai_client, "你好", seed=5 + i, temperature=1.0).choices[0]
        assert (choice.message.content, choice.finish_reason) == (alone.message.content, alone.finish_reason)
    assert two.usage.total_tokens == two.usage.prompt_tokens + two.usage.completion_tokens


def test_streaming_with_include_usage_ends_with_a_usage_chunk(openai_client):
    from openai.types.chat import ChatCompletionChunk
    options = dict(n=2, seed=9, temperature=0.9, top_p=0.95)
    done = ask(openai_client, "明天会下雨吗", **options)
    stream = ask(openai_client, "明天会下雨吗", stream=True, stream_options={"include_usage": True}, **options)
    chunks = list(stream)
    for chunk in chunks:
        no_unknown_fields(ChatCompletionChunk.model_validate(chunk.model_dump()))
    *body, last = chunks
    assert last.choices == [] and last.usage == done.usage
    assert all(c.usage is None and len(c.choices) == 1 for c in body)
    texts, finish = {0: "", 1: ""}, {}
    for c in body:
        texts[c.choices[0].index] += c.choices[0].delta.content or ""
        if c.choices[0].finish_reason:
            finish[c.choices[0].index] = c.choices[0].finish_reason
    assert texts == {c.index: c.message.content for c in done.choices}
    assert finish == {c.index: c.finish_reason for c in done.choices}
    # without include_usage there is no usage chunk
    plain = list(ask(openai_client, "明天会下雨吗", stream=True, **options))
    assert all(c.usage is None and c.choices for c in plain)


# --- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, param", [
    ({"presence_penalty": 0.5}, None),                      # not implemented: refused, not ignored
    ({"n": True}, "n"),                                     # true is not an integer
    ({"n": 2.0}, "n"),                                      # nor is a float
    ({"max_completion_tokens": "8"}, "max_completion_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": ""}, "stop"),
    ({"stream_options": {"include_usage": True}}, None),    # without stream
    ({"max_tokens": 4, "max_completion_tokens": 5}, None),
])
def test_bad_chat_requests_raise_bad_request_error(openai_client, extra, param):
    from openai import BadRequestError
    from openai.types import ErrorObject
    with pytest.raises(BadRequestError) as err:
        ask(openai_client, "你好", extra_body=extra)
    assert err.value.status_code == 400 and err.value.code == "invalid_request" and err.value.type == \
        "invalid_request_error"
    if param:
        assert err.value.param == param
    body = err.value.response.json()
    no_unknown_fields(ErrorObject.model_validate(body["error"]))
    assert set(body["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("path, body", [
    ("/v1/similar", {"text": "天气", "n": True}),
    ("/v1/similar", {"text": "天气", "k": 2.0}),
    ("/v1/similar", {"text": "天气", "decoding": {"num_beams": True, "strategy": "beam"}}),
    ("/v1/similar", {"text": "天气", "decoding": {"seed": 1.0}}),
    ("/v1/similar", {"text": "天气", "decoding": {"temperature": True}}),
    ("/v1/search", {"query": "天气", "k": False}),
    ("/v1/embeddings", {"input": "天气", "dimensions": 48.0}),
])
def test_json_types_are_strict(client, path, body):
    r = client.post(path, json=body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", r.text


@pytest.fixture(scope="module")
def keyed_url(serve_instance, chat_model_dir):
    """The app with an API key (its own application: the key is read when the app is built)."""
    from ray import serve

    from serving.app import AppArgs, build_app
    from tests.serving.conftest import wait_ready
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BERT4RAY_OPENAI_TEST_KEY", "s3cret")
        app = build_app(AppArgs(chat_model=str(chat_model_dir), api_key_env="BERT4RAY_OPENAI_TEST_KEY",
                                scaling={"num_replicas": 1, "num_cpus": 0.25}))
    serve.run(app, name="openai-keyed", route_prefix="/openai-keyed", blocking=False)
    try:
        base = f"{serve_instance}/openai-keyed"
        wait_ready(base)
        yield base
    finally:
        serve.delete("openai-keyed")


def test_a_missing_or_wrong_key_raises_authentication_error(keyed_url):
    from openai import AuthenticationError, OpenAI
    messages = [{"role": "user", "content": "你好"}]
    with OpenAI(base_url=f"{keyed_url}/v1", api_key="wrong", max_retries=0, timeout=60) as client:
        with pytest.raises(AuthenticationError) as err:
            client.chat.completions.create(model="chat", messages=messages, max_completion_tokens=4)
        assert err.value.code == "unauthorized" and err.value.type == "authentication_error"
        # no Authorization header at all
        with pytest.raises(AuthenticationError):
            client.with_options(default_headers={"Authorization": ""}).models.list()
    missing = httpx.post(f"{keyed_url}/v1/chat/completions", json={"messages": messages})
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    with OpenAI(base_url=f"{keyed_url}/v1", api_key="s3cret", max_retries=0, timeout=60) as client:
        out = client.chat.completions.create(model="chat", messages=messages, max_completion_tokens=4)
        assert out.choices[0].message.role == "assistant"


# --- the stop logic, without Serve ----------------------------------------------------------------
def test_stop_text_is_never_shown_even_across_pieces():
    from serving.chat import StopText
    cut = StopText(["END", "xyz"])
    shown = [cut.feed(p) for p in ("abcE", "N", "D tail")]
    assert "".join(shown) == "abc" and cut.stopped and shown[0] == "abc"
    held = StopText(["END"])
    assert held.feed("abcEN") == "abc"                      # "EN" may begin END: held back
    assert held.feed("o") == "ENo" and not held.stopped     # it did not
    assert held.feed("E") == "" and held.flush() == "E"     # the reply ended: the held tail is shown
    first = StopText(["cd", "bcd"])
    assert first.feed("abcde") == "a"                       # the earliest stop wins


def test_chatbot_counts_the_prompt_alike_with_and_without_a_stop(chat_model_dir):
    from serving.chat import Chatbot
    bot = Chatbot(chat_model_dir)
    request = {"messages": [{"role": "user", "content": "我的快递还没到"}], "max_tokens": 16, "temperature": 0}
    full = bot.complete(request)
    text = full["choices"][0]["text"]
    assert len(text) >= 4, text
    stopped = bot.complete({**request, "stop": [text[2:4]]})
    assert stopped["choices"] == [{"index": 0, "text": text[:text.index(text[2:4])], "finish_reason": "stop"}]
    assert stopped["usage"]["prompt_tokens"] == full["usage"]["prompt_tokens"]
    assert stopped["usage"]["completion_tokens"] < full["usage"]["completion_tokens"]


def test_content_parts_of_type_text_are_read_as_the_text(openai_client):
    parts = [{"type": "text", "text": "你"}, {"type": "text", "text": "好"}]
    out = openai_client.chat.completions.create(model="chat", messages=[{"role": "user", "content": parts}],
                                                temperature=0, max_completion_tokens=8)
    assert out.choices[0].message.content == ask(openai_client, "你好", temperature=0,
                                                 max_completion_tokens=8).choices[0].message.content
