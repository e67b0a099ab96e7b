"""POST /v1/segment and /v1/parse over real HTTP: the answers equal the plain Parser's, concurrent
requests are batched without changing them, and bad requests get 4xx error bodies."""

import concurrent.futures

import httpx
import pytest
import torch


@pytest.fixture(scope="module")
def parse_url(serve_instance, tmp_path_factory, vocab_file):
    from ray import serve

    from components.model import Transformer
    from components.tokenizer import Tokenizer
    from serving.app import AppArgs, build_app
    from tests.conftest import tiny_config
    from tests.serving.conftest import wait_ready
    torch.manual_seed(5)
    model = Transformer(tiny_config(Tokenizer(vocab_file).vocab_size, initializer_range=0.3,
                                    max_position_embeddings=32))
    out = tmp_path_factory.mktemp("mlm") / "model"
    model.save_pretrained(out, metadata={"vocab_file": str(vocab_file), "task": "mlm"})
    app = build_app(AppArgs(parser_model=str(out), limits={"max_text_chars": 64},
                            scaling={"num_replicas": 1, "num_cpus": 0.25}))
    serve.run(app, name="parse", route_prefix="/parse", blocking=False)
    base = f"{serve_instance}/parse"
    wait_ready(base)
    yield base, out
    serve.delete("parse")


TEXTS = ["我在银行修改密码", "怎么修改银行卡密码", "你好", "hello world playing bert"]


def test_segment_and_parse_equal_the_component(parse_url):
    from serving.parser import Parser

    def leaves(t):
        return [t] if isinstance(t, str) else [w for c in t for w in leaves(c)]
    base, model_dir = parse_url
    parser = Parser(model_dir)
    for text in TEXTS:
        got = httpx.post(f"{base}/v1/segment", json={"text": text}, timeout=60).json()
        assert got["words"] == parser.segment_many([text])[0]
        assert "".join(got["words"]) == "".join(text.split())
        parsed = httpx.post(f"{base}/v1/parse", json={"text": text}, timeout=60).json()
        want = parser.parse_many([{"text": text}])[0]
        assert parsed == want
        n = len(parsed["tokens"])
        assert len(parsed["heads"]) == n and parsed["heads"].count(0) == 1
        assert all(0 <= h <= n for h in parsed["heads"])
        assert leaves(parsed["tree"]) == parsed["tokens"]
    english = httpx.post(f"{base}/v1/parse", json={"text": TEXTS[3], "dependency": "chu_liu_edmonds",
                                                   "constituency": "right_branching"}, timeout=60).json()
    assert english["tokens"] == TEXTS[3].split()
    assert english["tree"] == ["hello", ["world", ["playing", "bert"]]]
    models = httpx.get(f"{base}/v1/models").json()["data"]
    assert [m["capability"] for m in models] == ["parser"] and models[0]["threshold"] == "per-text otsu"


def test_concurrent_requests_are_batched_to_the_same_answers(parse_url):
    base, _ = parse_url
    texts = [TEXTS[k % 3] + "好" * (k % 4) for k in range(12)]

    def segment(text):
        return httpx.post(f"{base}/v1/segment", json={"text": text}, timeout=60).json()["words"]
    alone = [segment(t) for t in texts]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(segment, texts))
    assert together == alone


@pytest.mark.parametrize("route, body, status, code", [
    ("segment", {"text": ""}, 400, "invalid_request"),
    ("segment", {"text": "   "}, 400, "invalid_request"),
    ("segment", {"text": "好" * 65}, 400, "limit_exceeded"),
    ("segment", {"text": 7}, 400, "invalid_request"),
    ("segment", {"text": "好", "threshold": 3}, 400, "invalid_request"),
    ("parse", {"text": "好", "dependency": "arcstandard"}, 400, "invalid_request"),
    ("parse", {"text": "好", "constituency": "cky"}, 400, "invalid_request"),
    ("parse", {"text": " ".join(["a"] * 31)}, 400, "invalid_request"),   # 31 words + [CLS]/[SEP] > 32 positions
])
def test_bad_requests(parse_url, route, body, status, code):
    base, _ = parse_url
    r = httpx.post(f"{base}/v1/{route}", json=body, timeout=60)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_long_text_is_segmented_in_pieces(parse_url):
    base, _ = parse_url
    text = "我在银行修改密码，" * 6                           # 54 characters > 30 per piece
    words = httpx.post(f"{base}/v1/segment", json={"text": text}, timeout=60).json()["words"]
    assert "".join(words) == text


def test_calibrated_settings_are_used(tmp_path, vocab_file):
    """`bert4ray probe ... output.save_to_model=true` writes the threshold the Parser then uses."""
    from components.model import Transformer
    from components.tokenizer import Tokenizer
    from pipelines.probe import ProbeSection, save_calibration
    from serving.parser import Parser
    from tests.conftest import tiny_config
    torch.manual_seed(5)
    Transformer(tiny_config(Tokenizer(vocab_file).vocab_size)).save_pretrained(
        tmp_path / "m", metadata={"vocab_file": str(vocab_file)})
    save_calibration(tmp_path / "m", ProbeSection(layer=1), threshold=-1.0)     # everything joins
    parser = Parser(tmp_path / "m")
    assert parser.info()["threshold"] == -1.0 and parser.settings["layer"] == 1
    assert parser.segment_many(["我在银行，修改密码"]) == [["我在银行，", "修改密码"]]


def test_routes_without_their_model_answer_404(parse_url):
    base, _ = parse_url
    r = httpx.post(f"{base}/v1/attribute", json={"text": "好"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_deployed"
