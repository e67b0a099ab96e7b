"""An application of its own ("recovery": the ingress and one encoder replica, no index, no
generator), so that the session app the other tests share is untouched:

- routes whose capability or index is missing answer 404 with the error body;
- recovery: under a bounded load on loopback, the encoder replica's actor is killed; Serve replaces
  it, and once the new replica runs every request succeeds. The number of requests that failed
  inside the kill window is printed (pytest -s, or the report's captured stdout)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx
import pytest

from tests.tiny_training import GROUPS

APP = "recovery"


@dataclass
class Outcome:
    start: float
    end: float
    status: int | str          # HTTP status, or the name of the client-side exception
    code: str | None = None    # the error body's code


def replica_names(app: str, deployment: str) -> set[str]:
    """Names of the live replica actors of a deployment (Serve names them
    `SERVE_REPLICA::<app>#<deployment>#<replica id>` in the "serve" namespace). This reads the GCS
    directly: the state API (`ray.util.state`) needs the dashboard, which the tests leave off."""
    import ray
    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == "serve" and a["name"].startswith(prefix)}


def deployment_running(app: str, deployment: str) -> bool:
    from ray import serve
    status = serve.status().applications.get(app)
    if status is None or deployment not in status.deployments:
        return False
    d = status.deployments[deployment]
    return d.status == "HEALTHY" and dict(d.replica_states) == {"RUNNING": 1}


class Load:
    """`workers` threads that each post /v1/embeddings in a loop until stopped, at most `max_requests`
    each or until `deadline_s`: a bounded load."""

    def __init__(self, base: str, workers: int = 4, max_requests: int = 2000, deadline_s: float = 180):
        self.base, self.max_requests = base, max_requests
        self.deadline = time.perf_counter() + deadline_s
        self.stop = threading.Event()
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(workers)]

    def _run(self, worker: int) -> None:
        with httpx.Client(base_url=self.base, timeout=90) as client:     # beyond the app's timeout_s
            for i in range(self.max_requests):
                if self.stop.is_set() or time.perf_counter() > self.deadline:
                    return
                t0 = time.perf_counter()
                text, code = GROUPS[(worker + i) % len(GROUPS)][0], None
                try:
                    r = client.post("/v1/embeddings", json={"input": text})
                    status: int | str = r.status_code
                    if status == 200 and len(r.json()["data"][0]["embedding"]) != 48:
                        status = "wrong-answer"
                    elif status != 200:
                        code = r.json()["error"]["code"] if r.headers.get("content-type") == "application/json" \
                            else r.text[:60]
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                with self.lock:
                    self.outcomes.append(Outcome(t0, time.perf_counter(), status, code))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)

    def count(self) -> int:
        with self.lock:
            return len(self.outcomes)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.fixture(scope="module")
def recovery_app(serve_instance, simbert_dir):
    """Ingress + one encoder replica (no index), health-checked every second so that Serve notices a
    dead replica quickly."""
    from ray import serve

    from serving.capabilities.retriever import RetrieverDeployment
    from serving.ingress import Ingress
    from tests.serving.conftest import wait_ready

    retriever = RetrieverDeployment.options(num_replicas=1, ray_actor_options={"num_cpus": 0.25},
                                            health_check_period_s=1, health_check_timeout_s=10)
    app = Ingress.options(ray_actor_options={"num_cpus": 0.1}).bind(
        limits={"timeout_s": 60}, retriever=retriever.bind(str(simbert_dir), None, {"enabled": True}))
    serve.run(app, name=APP, route_prefix=f"/{APP}", blocking=False)
    base = f"{serve_instance}/{APP}"
    try:
        wait_ready(base)
        wait_for(lambda: deployment_running(APP, "retriever"), 120, "the encoder replica")
        yield base
    finally:
        serve.delete(APP)


@pytest.mark.parametrize("path,body,code", [
    ("/v1/search", {"query": "天气"}, "no_index"),
    ("/v1/similar", {"text": "天气"}, "not_deployed"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "你好"}]}, "not_deployed"),
])
def test_a_missing_capability_or_index_is_a_404_with_the_error_body(recovery_app, path, body, code):
    response = httpx.post(f"{recovery_app}{path}", json=body, timeout=30)
    assert response.status_code == 404 and response.json()["error"]["code"] == code, response.text
    models = httpx.get(f"{recovery_app}/v1/models", timeout=30).json()["data"]
    assert [(m["capability"], m["index_size"]) for m in models] == [("retriever", None)]
    assert httpx.post(f"{recovery_app}/v1/embeddings", json={"input": "天气"}, timeout=30).status_code == 200


def test_serve_replaces_a_killed_replica_and_requests_succeed_after_recovery(recovery_app):
    import ray

    (old,) = replica_names(APP, "retriever")
    with Load(recovery_app) as load:
        wait_for(lambda: load.count() >= 20, 60, "20 requests before the kill")
        t_kill = time.perf_counter()
        ray.kill(ray.get_actor(old, namespace="serve"), no_restart=True)
        new = wait_for(lambda: replica_names(APP, "retriever") - {old}, 120, "a replacement replica")
        wait_for(lambda: deployment_running(APP, "retriever"), 120, "the replacement to run")
        t_recovered = time.perf_counter()
        n_recovered = load.count()
        wait_for(lambda: load.count() >= n_recovered + 40, 60, "40 requests after recovery")
    assert old not in replica_names(APP, "retriever") and len(new) == 1

    before = [o for o in load.outcomes if o.end < t_kill]
    window = [o for o in load.outcomes if o.end >= t_kill and o.start < t_recovered]
    after = [o for o in load.outcomes if o.start >= t_recovered]
    failed = [o for o in window if o.status != 200]
    in_flight = sum(o.start < t_kill <= o.end for o in load.outcomes)
    print(f"\nrecovery: killed replica {old.split('#')[-1]}, Serve replaced it with {next(iter(new)).split('#')[-1]} "
          f"running {t_recovered - t_kill:.1f} s later; requests before the kill {len(before)} (failed "
          f"{sum(o.status != 200 for o in before)}); in the kill window {len(window)} ({in_flight} in flight at "
          f"the kill, slowest {max((o.end - o.start for o in window), default=0):.1f} s), failed {len(failed)} "
          f"{sorted({f'{o.status} {o.code}' for o in failed})}; after recovery {len(after)} (failed "
          f"{sum(o.status != 200 for o in after)})")
    assert before and all(o.status == 200 for o in before)
    # A request lost with the replica gets the documented error body with a retryable status (503;
    # 504 if it waited for the replacement longer than the app's timeout_s), never a bare 500.
    assert all((o.status, o.code) in ((503, "unavailable"), (504, "timeout")) for o in failed), \
        [(o.status, o.code) for o in failed]
    assert len(after) >= 40 and all(o.status == 200 for o in after), [o.status for o in after if o.status != 200]
