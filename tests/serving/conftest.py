"""A real Serve application on 127.0.0.1 (free port) serving a tiny trained SimBERT, its index and
a tiny dialogue model, shared by the HTTP tests of this package."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.tiny_training import GROUPS, train_tiny_simbert

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def serve_instance(ray_session):
    """Serve started on loopback; shut down (Serve only) at the end of the session."""
    from ray import serve
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="session")
def simbert_dir(tmp_path_factory, vocab_file) -> Path:
    return train_tiny_simbert(tmp_path_factory.mktemp("simbert") / "model", vocab_file, steps=60)


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory, simbert_dir) -> Path:
    from components.index import VectorIndex
    from components.simbert import SimBERT
    from components.weights import model_fingerprint
    sim = SimBERT.from_pretrained(simbert_dir)
    texts = [t for g in GROUPS for t in g]
    index = VectorIndex(sim.model.config.hidden_size, model_fingerprint(simbert_dir))
    index.add(sim.encode(texts), [f"g{i // 3}-{i % 3}" for i in range(len(texts))], texts)
    out = tmp_path_factory.mktemp("index") / "index"
    index.save(out)
    return out


def wait_ready(base: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{base} did not become ready")


@pytest.fixture(scope="session")
def app_url(serve_instance, simbert_dir, index_dir, chat_model_dir):  # noqa: D401
    from ray import serve

    from serving.app import AppArgs, build_app
    args = AppArgs(model=str(simbert_dir), index=str(index_dir), chat_model=str(chat_model_dir),
                   limits={"max_text_chars": 64, "max_n": 32, "max_k": 20, "max_new_tokens": 24,
                           "max_body_bytes": 4096, "max_turns": 6, "timeout_s": 20},
                   scaling={"num_replicas": 1, "num_cpus": 0.5})
    serve.run(build_app(args), name="bert4ray", route_prefix="/", blocking=False)
    wait_ready(serve_instance)
    yield serve_instance
    serve.delete("bert4ray")


@pytest.fixture(scope="session")
def chat_model_dir(tmp_path_factory, vocab_file) -> Path:
    import torch

    from components.model import Transformer
    from components.tokenizer import Tokenizer
    from tests.conftest import tiny_config
    tok = Tokenizer(vocab_file)
    torch.manual_seed(7)
    model = Transformer(tiny_config(tok.vocab_size, eos_token_id=tok.sep_id))
    out = tmp_path_factory.mktemp("chat") / "model"
    model.save_pretrained(out, metadata={"vocab_file": str(vocab_file), "task": "dialog"})
    return out


@pytest.fixture
def client(app_url):
    with httpx.Client(base_url=app_url, timeout=30) as c:
        yield c


os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
