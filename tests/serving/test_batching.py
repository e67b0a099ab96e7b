"""Dynamic batching over real HTTP: requests that arrive together reach the model in shared
batches (counted by the deployments), and each still gets its own answer: the same as alone."""

from __future__ import annotations

import concurrent.futures as cf

import httpx
import pytest

from serving.deployments import _Batches
from tests.tiny_training import GROUPS

APP = "batching"


def test_answer_each_computes_in_bounded_batches_and_returns_each_call_its_answers():
    class Method:                                  # the settings a @serve.batch method takes
        def set_max_batch_size(self, n): self.size = n
        def set_batch_wait_timeout_s(self, s): self.wait = s

    method = Method()
    batches = _Batches({"enabled": True, "max_batch_size": 3}, method)
    seen = []
    out = batches.answer_each(lambda xs: seen.append(list(xs)) or [x * 10 for x in xs], [[1, 2], [3], [4, 5, 6, 7]])
    assert out == [[10, 20], [30], [40, 50, 60, 70]]
    assert seen == [[1, 2, 3], [4, 5, 6], [7]]
    assert batches.served == {"requests": 7, "batches": 3} and (method.size, method.wait) == (3, 0.0)
    assert _Batches({"enabled": False, "max_batch_size": 3}, method).size == 1 and method.size == 1


@pytest.fixture(scope="module")
def apps(serve_instance, simbert_dir, index_dir):
    """The application twice: batching with a long wait (so that concurrent requests surely meet)
    and without batching."""
    from ray import serve

    from serving.app import AppArgs, build_app
    from tests.serving.conftest import wait_ready
    urls = {}
    for mode, batching in (("on", {"enabled": True, "max_batch_size": 8, "batch_wait_timeout_s": 0.25}),
                           ("off", {"enabled": False})):
        args = AppArgs(model=str(simbert_dir), index=str(index_dir), limits={"timeout_s": 30},
                       batching=batching, scaling={"num_replicas": 1, "num_cpus": 0.25})
        serve.run(build_app(args), name=f"{APP}-{mode}", route_prefix=f"/{APP}-{mode}", blocking=False)
        urls[mode] = f"{serve_instance}/{APP}-{mode}"
    try:
        for url in urls.values():
            wait_ready(url)
        yield urls
    finally:
        for mode in urls:
            serve.delete(f"{APP}-{mode}")


def _requests() -> list[tuple[str, dict]]:
    """Different routes, texts, n, k and seeds, with a request the decoder rejects among them."""
    out = []
    for i in range(12):
        text = GROUPS[i % len(GROUPS)][i % 3]
        out.append(("/v1/similar", {"text": text, "n": 4 + i % 3, "k": 1 + i % 4,
                                    "decoding": {"max_new_tokens": 8, "seed": i}}))
        out.append(("/v1/search", {"query": text, "k": 1 + i % 5}))
    out.append(("/v1/embeddings", {"input": [GROUPS[0][0], GROUPS[1][1]]}))
    out.append(("/v1/similar", {"text": GROUPS[3][0], "n": 2, "decoding": {"strategy": "greedy"}}))
    return out


def _close(a, b) -> bool:
    """Equal JSON, floats within 1e-5 (a batch may sum in another order than a request alone)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_close, a, b))
    if isinstance(a, float):
        return b == pytest.approx(a, abs=1e-5)
    return a == b


def _served(client: httpx.Client) -> dict:
    return {m["capability"]: m["served"] for m in client.get("/v1/models").json()["data"]}


def _post_all(base: str, requests) -> list[httpx.Response]:
    with httpx.Client(base_url=base, timeout=60) as client, cf.ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda r: client.post(r[0], json=r[1]), requests))


def test_concurrent_requests_share_batches_and_each_gets_its_answer_as_alone(apps):
    requests = _requests()
    with httpx.Client(base_url=apps["on"], timeout=60) as client:
        alone = [client.post(path, json=body) for path, body in requests]
        before = _served(client)
        together = _post_all(apps["on"], requests)
        after = _served(client)
    assert [r.status_code for r in alone] == [200] * (len(requests) - 1) + [400]
    assert [r.status_code for r in together] == [r.status_code for r in alone]
    for (path, body), a, b in zip(requests, alone, together):
        assert _close(a.json(), b.json()), (path, body, a.json(), b.json())
    gen = {k: after["generator"][k] - before["generator"][k] for k in ("requests", "batches")}
    ret = {k: after["retriever"][k] - before["retriever"][k] for k in ("requests", "batches")}
    assert gen["requests"] == 13 and ret["requests"] == 12 + 2
    # 13 similar requests, at most 8 per batch, arriving within the 0.25 s wait: a few batches.
    assert gen["batches"] <= 5 and ret["batches"] <= 5, (gen, ret)


def test_without_batching_every_request_is_its_own_batch(apps):
    requests = _requests()
    with httpx.Client(base_url=apps["off"], timeout=60) as client:
        before = _served(client)
        together = _post_all(apps["off"], requests)
        after = _served(client)
    assert [r.status_code for r in together] == [200] * (len(requests) - 1) + [400]
    assert after["generator"]["batches"] - before["generator"]["batches"] == 13
    assert after["retriever"]["batches"] - before["retriever"]["batches"] == 14
