"""`bert4ray serve` and `serve run` as users type them: subprocesses that start their own Ray with this
machine's CPUs and no test-only resource settings; ready within a bound, or a one-line reason."""

from __future__ import annotations

import os
import re
import shutil
import time

import httpx
import pytest

from serving.resources import INGRESS_CPUS, local_cpus
from tests.serving.conftest import free_port
from tests.serving.serve_process import BIN, REPO, SERVING_LINE, ServeProcess, get_ready, parse_shares

READY_S = 60


def assert_split(output: str, models: set[str]) -> None:
    """The Ray started has exactly this machine's CPUs; the model replicas share what the ingress
    leaves, to the hundredth each."""
    cpus, shares = parse_shares(output)
    assert cpus == local_cpus() == os.cpu_count()
    assert shares.pop("ingress") == INGRESS_CPUS
    assert set(shares) == models
    left = cpus - INGRESS_CPUS
    assert left - 0.01 * len(models) < sum(shares.values()) <= left


@pytest.fixture
def models(tmp_path, simbert_dir, index_dir, chat_model_dir, vocab_file):
    """The five capabilities' model directories (tiny), in a working directory of their own."""
    import torch

    from components.model import Transformer
    from components.tokenizer import Tokenizer
    from tests.conftest import tiny_config
    vocab = Tokenizer(vocab_file).vocab_size
    out = {"model": simbert_dir, "index": index_dir, "chat-model": chat_model_dir}
    for flag, task, extra in (("attribution-model", "classify", {"num_labels": 2, "labels": ["neg", "pos"]}),
                              ("parser-model", "mlm", {})):
        torch.manual_seed(3)
        path = tmp_path / task
        Transformer(tiny_config(vocab, **extra)).save_pretrained(path, metadata={"vocab_file": str(vocab_file),
                                                                                  "task": task})
        out[flag] = path
    return out


def serve_argv(models: dict, names: list[str], port: int) -> list[str]:
    argv = [str(BIN / "bert4ray"), "serve", "--port", str(port)]
    for name in names:
        argv += [f"--{name}", str(models[name])]
    return argv


def test_all_five_capabilities_at_once(models, tmp_path):
    """Every deployment on this machine's own CPUs (automatic shares), ready in time, each route
    answering; SIGTERM then ends the command with exit 0."""
    port = free_port()
    names = ["model", "index", "chat-model", "attribution-model", "parser-model"]
    server = ServeProcess(serve_argv(models, names, port), tmp_path, tmp_path / "serve.log")
    try:
        base = server.wait_for(SERVING_LINE, READY_S).group(1)
        assert time.monotonic() - server.started < READY_S
        get_ready(base, 10)
        calls = {"/v1/search": {"query": "明天会下雨吗", "k": 2},
                 "/v1/similar": {"text": "明天会下雨吗", "n": 4, "k": 2},
                 "/v1/embeddings": {"input": ["你好"]},
                 "/v1/chat/completions": {"messages": [{"role": "user", "content": "在吗"}], "max_tokens": 4},
                 "/v1/attribute": {"text": "很好", "steps": 8},
                 "/v1/segment": {"text": "我在银行"},
                 "/v1/parse": {"text": "我在银行"}}
        for route, body in calls.items():
            r = httpx.post(f"{base}{route}", json=body, timeout=60)
            assert r.status_code == 200, (route, r.text)
        assert_split(server.output(), {"retriever", "generator", "chat", "attributor", "parser"})
    finally:
        server.stop()
    assert server.proc.returncode == 0, server.output()[-2000:]


@pytest.mark.slow             # 70-80 s: in the slow set, to keep the default suite under 15 min
def test_a_deployment_that_cannot_be_placed_ends_the_command(models, tmp_path):
    config = tmp_path / "big.yaml"
    config.write_text(f"applications:\n  - name: bert4ray\n    route_prefix: /\n"
                      f"    import_path: serving.app:build_app\n    args:\n      model: {models['model']}\n"
                      f"      scaling: {{num_cpus: 64}}\n", encoding="utf-8")
    server = ServeProcess([str(BIN / "bert4ray"), "serve", str(config), "--port", str(free_port())], tmp_path,
                          tmp_path / "serve.log")
    try:
        # Ray's start and Serve's controller come before the 60 s bound; both fit in 60 s more.
        code = server.wait_exit(READY_S + 60)
    finally:
        server.stop()
    errors = [line for line in server.output().splitlines() if line.startswith("bert4ray serve: error:")]
    assert code == 1 and len(errors) == 1, server.output()[-3000:]
    match = re.search(r"deployment '(retriever|generator)' can never be placed: each replica asks for 64 CPU; "
                      r"the cluster has ([\d.]+) CPU in all", errors[0])
    assert match and float(match.group(2)) == os.cpu_count(), errors[0]


@pytest.mark.parametrize("case, message", [
    ("no-config", "holds no config.json"),
    ("other-index", "was built with another model"),
    ("missing", "does not exist"),
])
def test_input_errors_before_ray_starts(models, tmp_path, case, message):
    import subprocess
    if case == "no-config":
        (tmp_path / "empty").mkdir()
        argv = ["--model", str(tmp_path / "empty")]
    elif case == "other-index":
        argv = ["--model", str(models["chat-model"]), "--index", str(models["index"])]
    else:
        argv = ["--model", str(tmp_path / "nowhere")]
    proc = subprocess.run([str(BIN / "bert4ray"), "serve", *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


@pytest.fixture
def quickstart_layout(tmp_path, simbert_dir, index_dir):
    """A working directory where serving/config.yaml's relative paths find a model and its index."""
    root = tmp_path / "bert4ray-runs" / "quickstart"
    shutil.copytree(simbert_dir, root / "model")
    shutil.copytree(index_dir, root / "index")
    return tmp_path


@pytest.mark.parametrize("command", ["bert4ray serve", pytest.param("serve run", marks=pytest.mark.slow)])
def test_the_shipped_config_becomes_ready(quickstart_layout, command):
    """The shipped config as is (port 8000, automatic CPU shares), by both commands."""
    program, sub = command.split()
    argv = [str(BIN / program), sub, str(REPO / "serving" / "config.yaml")]
    server = ServeProcess(argv, quickstart_layout, quickstart_layout / "serve.log")
    try:
        get_ready("http://127.0.0.1:8000", READY_S)
        r = httpx.post("http://127.0.0.1:8000/v1/search", json={"query": "明天会下雨吗", "k": 2}, timeout=30)
        assert r.status_code == 200 and r.json()["hits"][0]["text"] == "明天会下雨吗", r.text
    finally:
        server.stop()
