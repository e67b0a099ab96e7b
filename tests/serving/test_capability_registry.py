"""A capability is added by its module alone. tests/serving/toy_capability.py registers a toy echo
model (its deployment, its argument and its route) with one call and nothing else names it; run as
a user runs the server, with the module in BERT4RAY_CAPABILITIES, `python -m serving` takes its
flag, serves its route over HTTP with the usual batching and error body, and lists it in
/v1/models; `bert4ray serve` forwards the flag."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from tests.serving.conftest import free_port
from tests.serving.serve_process import REPO, SERVING_LINE, ServeProcess, parse_shares

READY_S = 60
TOY = {"BERT4RAY_CAPABILITIES": "tests.serving.toy_capability", "PYTHONPATH": str(REPO)}


@pytest.fixture
def toy_model(tmp_path):
    path = tmp_path / "toy"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"prefix": "echo: "}), encoding="utf-8")
    return path


def test_the_registration_gives_python_m_serving_its_flag_and_bert4ray_serve_forwards_it(toy_model):
    shown = subprocess.run([sys.executable, "-m", "serving", "--help"], env={**os.environ, **TOY},
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "--toy-model" in shown.stdout, shown.stderr[-2000:]

    from pipelines.cli import build_parser
    from pipelines.commands.serve import serving_command
    args = build_parser().parse_args(["serve", "--toy-model", str(toy_model), "--port", "8123"])
    assert serving_command(args)[1:] == ["-m", "serving", "--port", "8123", "--toy-model", str(toy_model)]


def test_the_toy_capability_answers_over_http(toy_model, tmp_path):
    argv = [sys.executable, "-m", "serving", "--toy-model", str(toy_model), "--port", str(free_port())]
    server = ServeProcess(argv, tmp_path, tmp_path / "serve.log", env=TOY)
    try:
        base = server.wait_for(SERVING_LINE, READY_S).group(1)
        with httpx.Client(base_url=base, timeout=30) as client:
            r = client.post("/v1/toy-echo", json={"text": "你好"})
            assert r.status_code == 200 and r.json() == {"echo": "echo: 你好", "length": 2}, r.text
            rejected = client.post("/v1/toy-echo", json={"text": " "})
            assert rejected.status_code == 400 and rejected.json() == {"error": {
                "message": "nothing to echo", "type": "invalid_request_error", "param": "text",
                "code": "invalid_request"}}
            assert client.post("/v1/toy-echo", json={"text": 3}).json()["error"]["code"] == "invalid_request"
            (model,) = client.get("/v1/models").json()["data"]
            assert (model["capability"], model["id"], model["kind"]) == ("toy", "toy", "toy-echo")
            assert len(model["fingerprint"]) == 64 and model["served"]["requests"] == 2
            missing = client.post("/v1/similar", json={"text": "你好"})
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_deployed"
            assert "/v1/toy-echo" in client.get("/openapi.json").json()["paths"]
    finally:
        server.stop()
    assert server.proc.returncode == 0, server.output()[-2000:]
    assert set(parse_shares(server.output())[1]) == {"ingress", "toy"}
