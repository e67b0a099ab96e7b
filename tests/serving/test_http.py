"""The Serve application over real HTTP on 127.0.0.1: every route's normal answer and a table of
bad inputs, each answered with a 4xx and the documented error body (OpenAI's shape and statuses:
a request that fails validation or a limit is a 400)."""

import json

import httpx
import pytest

from tests.tiny_training import GROUPS


def test_health_models_docs_and_demo_page(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    models = client.get("/v1/models").json()
    caps = {m["capability"]: m for m in models["data"]}
    assert {"retriever", "generator", "chat"} <= set(caps)
    assert len(caps["retriever"]["fingerprint"]) == 64 and caps["retriever"]["index_size"] == 24
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/v1/similar" in spec["paths"] and "/v1/embeddings" in spec["paths"]
    # the documented bad-request answer is the one given: 400 with the error body, no 422
    similar = spec["paths"]["/v1/similar"]["post"]["responses"]
    assert "422" not in similar and similar["400"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ErrorResponse")
    assert set(spec["components"]["schemas"]["ErrorBody"]["properties"]) == {"message", "type", "param", "code"}
    page = client.get("/")
    assert page.status_code == 200 and "<script src" not in page.text and "http" not in page.text.split("<script>")[1]


def test_search_finds_the_paraphrases_of_the_query(client):
    hits = client.post("/v1/search", json={"query": GROUPS[0][0], "k": 3}).json()["hits"]
    assert len(hits) == 3
    assert hits[0]["text"] == GROUPS[0][0] and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert all(h["id"].startswith("g0-") for h in hits)          # the tiny model has learnt its groups
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_embeddings_have_the_openai_shape(client):
    out = client.post("/v1/embeddings", json={"input": ["今天天气怎么样", "今天天气好吗"]}).json()
    assert out["object"] == "list" and [d["index"] for d in out["data"]] == [0, 1]
    a, b = (d["embedding"] for d in out["data"])
    assert len(a) == 48 and sum(x * x for x in a) == pytest.approx(1.0, abs=1e-4)
    single = client.post("/v1/embeddings", json={"input": "今天天气怎么样"}).json()
    assert single["data"][0]["embedding"] == pytest.approx(a, abs=1e-5)


def test_similar_returns_distinct_candidates_sorted_by_score(client):
    text = GROUPS[1][0]
    out = client.post("/v1/similar", json={"text": text, "n": 16, "k": 5, "decoding": {"seed": 1}}).json()
    cands = out["candidates"]
    assert 1 <= len(cands) <= 5
    texts = [c["text"] for c in cands]
    assert text not in texts and len(set(texts)) == len(texts)
    scores = [c["score"] for c in cands]
    assert scores == sorted(scores, reverse=True)


def test_similar_accepts_every_tuned_decoding_setting(client):
    """What `bert4ray tune` writes to decoding.json can be sent as `decoding` as it is."""
    decoding = {"strategy": "beam", "num_beams": 4, "length_penalty": 0.6, "min_new_tokens": 3,
                "max_new_tokens": 12, "no_repeat_ngram_size": 2}
    out = client.post("/v1/similar", json={"text": GROUPS[2][0], "n": 4, "k": 4, "decoding": decoding})
    assert out.status_code == 200, out.text
    assert 1 <= len(out.json()["candidates"]) <= 4


LONG = "天" * 65
BAD = [
    # (method, path, body bytes or json, headers, status, code)
    ("POST", "/v1/search", {"query": ""}, None, 400, "invalid_request"),
    ("POST", "/v1/search", {"query": "   "}, None, 400, "invalid_request"),
    ("POST", "/v1/search", {"query": LONG}, None, 400, "limit_exceeded"),
    ("POST", "/v1/search", {"query": "天气", "k": 0}, None, 400, "invalid_request"),
    ("POST", "/v1/search", {"query": "天气", "k": 10_000}, None, 400, "limit_exceeded"),
    ("POST", "/v1/search", {"query": "天气", "k": "five"}, None, 400, "invalid_request"),
    ("POST", "/v1/search", {"query": 42}, None, 400, "invalid_request"),
    ("POST", "/v1/search", {"query": "天气", "extra": 1}, None, 400, "invalid_request"),
    ("POST", "/v1/search", {}, None, 400, "invalid_request"),
    ("POST", "/v1/search", b"{not json", None, 400, "invalid_json"),
    ("POST", "/v1/search", b"\xff\xfe\x00", None, 400, "invalid_encoding"),
    ("POST", "/v1/search", b'{"query": "x"}', {"content-type": "text/plain"}, 415, "unsupported_media_type"),
    ("POST", "/v1/search", json.dumps({"query": "天" * 5000}).encode(), None, 413, "payload_too_large"),
    ("POST", "/v1/similar", {"text": "天气", "n": 1000}, None, 400, "limit_exceeded"),
    ("POST", "/v1/similar", {"text": "天气", "decoding": {"top_p": 1.5}}, None, 400, "invalid_request"),
    ("POST", "/v1/similar", {"text": "天气", "decoding": {"temperature": -1}}, None, 400, "invalid_request"),
    ("POST", "/v1/similar", {"text": "天气", "decoding": {"max_new_tokens": 500}}, None, 400, "limit_exceeded"),
    ("POST", "/v1/similar", {"text": "天气", "decoding": {"beams": 2}}, None, 400, "invalid_request"),
    ("POST", "/v1/similar", {"text": "天气", "decoding": {"seed": 10**30}}, None, 400, "invalid_request"),
    ("POST", "/v1/similar", {"text": "天气", "n": 8, "decoding": {"strategy": "beam", "num_beams": 4}}, None, 400,
     "invalid_request"),
    ("POST", "/v1/similar", {"text": "天气", "decoding": {"min_new_tokens": 20, "max_new_tokens": 10}}, None, 400,
     "limit_exceeded"),
    ("POST", "/v1/embeddings", {"input": []}, None, 400, "invalid_request"),
    ("POST", "/v1/embeddings", {"input": ["ok", ""]}, None, 400, "invalid_request"),
    ("POST", "/v1/embeddings", {"input": ["天"] * 100}, None, 400, "limit_exceeded"),
    ("POST", "/v1/chat/completions", {"messages": []}, None, 400, "invalid_request"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, None, 400,
     "invalid_request"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "你好"}] * 7}, None, 400,
     "limit_exceeded"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "assistant", "content": "你好"}]}, None, 400,
     "invalid_request"),
    ("GET", "/v1/nothing-here", None, None, 404, "not_found"),
    ("GET", "/v1/search", None, None, 405, "method_not_allowed"),
]


@pytest.mark.parametrize("method,path,body,headers,status,code", BAD,
                         ids=[f"{i}-{b[1]}-{b[5]}" for i, b in enumerate(BAD)])
def test_bad_input_gets_a_4xx_with_the_error_body(client, method, path, body, headers, status, code):
    kwargs = {}
    if isinstance(body, bytes):
        kwargs["content"] = body
        kwargs["headers"] = headers or {"content-type": "application/json"}
    elif body is not None:
        kwargs["json"] = body
    response = client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"


def test_a_bad_request_never_takes_the_replica_down(client):
    for _ in range(5):
        client.post("/v1/search", content=b"\xff", headers={"content-type": "application/json"})
    assert client.post("/v1/search", json={"query": "天气", "k": 1}).status_code == 200


def test_api_key_is_required_when_configured(serve_instance, simbert_dir, monkeypatch):
    from ray import serve

    from serving.app import AppArgs, build_app
    from tests.serving.conftest import wait_ready
    monkeypatch.setenv("BERT4RAY_TEST_KEY", "s3cret")
    app = build_app(AppArgs(model=str(simbert_dir), api_key_env="BERT4RAY_TEST_KEY",
                            scaling={"num_replicas": 1, "num_cpus": 0.25}))
    serve.run(app, name="keyed", route_prefix="/keyed", blocking=False)
    try:
        wait_ready(f"{serve_instance}/keyed")
        base = f"{serve_instance}/keyed"
        assert httpx.get(f"{base}/healthz").status_code == 200                  # liveness stays open
        denied = httpx.post(f"{base}/v1/embeddings", json={"input": "天气"})
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
        assert denied.json()["error"]["type"] == "authentication_error"
        wrong = httpx.post(f"{base}/v1/embeddings", json={"input": "天气"}, headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401
        ok = httpx.post(f"{base}/v1/embeddings", json={"input": "天气"},
                        headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
    finally:
        serve.delete("keyed")
