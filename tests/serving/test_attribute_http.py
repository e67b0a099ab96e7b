"""POST /v1/attribute over real HTTP: the JSON answer equals the component's, the heat map is
escaped HTML, and bad requests get 4xx error bodies."""

import httpx
import pytest
import torch


@pytest.fixture(scope="module")
def attr_url(serve_instance, tmp_path_factory, vocab_file):
    from ray import serve

    from components.model import Transformer
    from components.tokenizer import Tokenizer
    from serving.app import AppArgs, build_app
    from tests.conftest import tiny_config
    from tests.serving.conftest import wait_ready
    torch.manual_seed(3)
    model = Transformer(tiny_config(Tokenizer(vocab_file).vocab_size, num_labels=2, labels=["neg", "pos"]))
    out = tmp_path_factory.mktemp("clf") / "model"
    model.save_pretrained(out, metadata={"vocab_file": str(vocab_file), "task": "classify"})
    app = build_app(AppArgs(attribution_model=str(out), limits={"max_text_chars": 64, "max_steps": 64},
                            scaling={"num_replicas": 1, "num_cpus": 0.25}))
    serve.run(app, name="attr", route_prefix="/attr", blocking=False)
    base = f"{serve_instance}/attr"
    wait_ready(base)
    yield base, out
    serve.delete("attr")


def test_attribution_equals_the_component(attr_url):
    from components.attribution import Attributor
    base, model_dir = attr_url
    text = "这家酒店很干净，服务也好"
    got = httpx.post(f"{base}/v1/attribute", json={"text": text, "steps": 20}, timeout=60).json()
    want = Attributor.from_pretrained(model_dir).attribute(text, n_steps=20)
    assert got["tokens"] == want.tokens and got["label"] == want.label and got["target"] == want.target_label
    assert got["scores"] == pytest.approx(want.scores, abs=1e-6) and got["delta"] == pytest.approx(want.delta, abs=1e-6)
    named = httpx.post(f"{base}/v1/attribute", json={"text": text, "steps": 20, "target": "neg"}, timeout=60).json()
    assert named["target"] == "neg"
    models = httpx.get(f"{base}/v1/models").json()["data"]
    assert [m["capability"] for m in models] == ["attributor"] and models[0]["labels"] == ["neg", "pos"]


def test_heat_map_is_escaped_html(attr_url):
    base, _ = attr_url
    r = httpx.post(f"{base}/v1/attribute", json={"text": "<script>alert(1)</script>好", "steps": 8},
                   headers={"Accept": "text/html"}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<script>alert(1)</script>" not in r.text and "&lt;" in r.text


@pytest.mark.parametrize("body, status, code", [
    ({"text": ""}, 400, "invalid_request"),
    ({"text": "好", "steps": 0}, 400, "invalid_request"),
    ({"text": "好", "steps": 500}, 400, "limit_exceeded"),
    ({"text": "好" * 65}, 400, "limit_exceeded"),
    ({"text": "好", "target": "meh"}, 400, "invalid_request"),
    ({"text": "好", "target": 7}, 400, "invalid_request"),
    ({"text": "好", "rule": "simpson"}, 400, "invalid_request"),
    ({"text": "好", "colour": "red"}, 400, "invalid_request"),
])
def test_bad_attribution_requests(attr_url, body, status, code):
    base, _ = attr_url
    r = httpx.post(f"{base}/v1/attribute", json=body, timeout=60)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_routes_without_their_model_answer_404(attr_url):
    base, _ = attr_url
    r = httpx.post(f"{base}/v1/search", json={"query": "天气"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_deployed"
