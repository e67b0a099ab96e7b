"""A Serve config is honoured whole: its `deployments:` overrides reach Serve the same way through
`bert4ray serve CONFIG` and `serve run CONFIG`, read back from Serve's own state (the dashboard's
REST API) on a Ray head of the test's own with 2 CPUs."""

from __future__ import annotations

import re
import signal
import time

import httpx
import pytest
import yaml

from tests.cluster.raycluster import RayHead
from tests.serving.conftest import free_port
from tests.serving.serve_process import BIN, ServeProcess, get_ready

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def head():
    h = RayHead(num_cpus=2)
    h.start()
    yield h
    h.stop()
    assert h.alive() == [], f"processes of the test's Ray head still running: {h.alive()}"


def serve_details(head: RayHead, timeout_s: float = 90) -> dict:
    """The bert4ray app's deployments once it is RUNNING, from GET /api/serve/applications/."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            apps = httpx.get(f"{head.address}/api/serve/applications/", timeout=10).json()["applications"]
            if apps["bert4ray"]["status"] == "RUNNING":
                return apps["bert4ray"]["deployments"]
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"the app was not RUNNING within {timeout_s} s")


@pytest.mark.parametrize("command", ["bert4ray serve", "serve run"])
def test_deployment_overrides_take_effect(head, tmp_path, simbert_dir, index_dir, command):
    port = free_port()
    config = {
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [{
            "name": "bert4ray", "route_prefix": "/", "import_path": "serving.app:build_app",
            "args": {"model": str(simbert_dir), "index": str(index_dir)},
            "deployments": [{"name": "generator", "num_replicas": 2, "max_ongoing_requests": 7,
                             "ray_actor_options": {"num_cpus": 0.4}}],
        }],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    program, sub = command.split()
    argv = [str(BIN / program), sub, str(path)]
    if program == "bert4ray":
        argv += ["--address", head.gcs_address]
    server = ServeProcess(argv, tmp_path, tmp_path / "serve.log",
                          env={"RAY_ADDRESS": head.gcs_address, **head.env()})
    try:
        deployments = serve_details(head)
        generator = deployments["generator"]
        assert len([r for r in generator["replicas"] if r["state"] == "RUNNING"]) == 2
        assert generator["deployment_config"]["max_ongoing_requests"] == 7
        assert generator["deployment_config"]["ray_actor_options"]["num_cpus"] == 0.4
        # The retriever, not overridden, keeps the automatic share of what is left.
        assert deployments["retriever"]["deployment_config"]["ray_actor_options"]["num_cpus"] == 0.87
        base = f"http://127.0.0.1:{port}"
        get_ready(base, 30)
        r = httpx.post(f"{base}/v1/similar", json={"text": "明天会下雨吗", "n": 4, "k": 2}, timeout=30)
        assert r.status_code == 200, r.text
        if program == "bert4ray":                       # its start-up line says the same
            # printed once Serve reports the app running, which may come after the first answer
            server.wait_for(re.compile(re.escape("retriever 0.87 CPU, generator 0.4 CPU x2, ingress 0.25 CPU")), 60)
    finally:
        server.stop(sig=signal.SIGTERM if program == "bert4ray" else signal.SIGINT)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
