"""What every model deployment shares: its Serve options, the batching of its `*_many` methods,
and its entry in /v1/models. The deployments themselves live with their capability, in
serving/capabilities/.

Batching happens in two places. The ingress gathers the requests that arrive together and sends a
deployment one call with all of them (the `*_many` methods: a list of requests in, a list of
answers out, in order), so Serve's per-call work (routing, serialisation, the replica's queue) is
paid once per batch, not once per request. Here, `@serve.batch` merges the calls that queued up
while the replica was busy (from several ingress replicas, or direct handle callers) without
waiting for more, and the model computes their requests in batches of at most `max_batch_size`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from serving.errors import invalid_request
from serving.loaded_model import LoadedModel

MAX_BATCH_SIZE = 16
"""Requests per call and per model batch unless the app's `batching` says otherwise."""


class Batching(BaseModel):
    """The ingress sends a model deployment the requests that arrive together in one call (at most
    two calls per replica outstanding; what arrives meanwhile leaves with the next), and the model
    computes them together."""
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    """false: every request is a call and a model batch of its own."""
    max_batch_size: int = Field(MAX_BATCH_SIZE, ge=1, le=256)
    """Requests per call and per model batch."""
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=1)
    """How long a request waits for others to join it when the model is free."""


def model_deployment(name: str):
    """@serve.deployment for a model deployment: a short graceful shutdown (requests are small,
    and tests and `bert4ray serve` stop faster)."""
    return serve.deployment(name=name, graceful_shutdown_wait_loop_s=0.5, graceful_shutdown_timeout_s=5)


def batched(method):
    """@serve.batch for a `*_many` method; `_Batches` sets its size from the app's settings when
    the replica starts."""
    return serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=0.0)(method)


def batch_size(batching: dict) -> int:
    settings = Batching(**batching)
    return settings.max_batch_size if settings.enabled else 1


class _Batches:
    """Answers `*_many` calls in model batches of at most `max_batch_size` requests, and counts
    them (shown by /v1/models, so that an operator sees the batch sizes reached)."""

    def __init__(self, batching: dict, *methods):
        self.size = batch_size(batching)
        self.served = {"requests": 0, "batches": 0}
        for method in methods:
            # The ingress already waited for its batch: merge only what is queued, never wait again.
            method.set_max_batch_size(self.size)
            method.set_batch_wait_timeout_s(0.0)

    def answer_each(self, fn, calls: list[list], param: str | None = None) -> list[list]:
        """Runs `fn` (a list of requests → a list of answers) over every call's requests, at most
        `size` at a time, and hands each call its own answers back. An answer `{"error": message}`
        (how the plain capability classes reject a request) becomes the ApiError the client gets
        (400, naming `param`)."""
        flat = [request for call in calls for request in call]
        answers = []
        for start in range(0, len(flat), self.size):
            answers += [_as_error(a, param) for a in fn(flat[start:start + self.size])]
            self.served["batches"] += 1
        self.served["requests"] += len(flat)
        out, start = [], 0
        for call in calls:
            out.append(answers[start:start + len(call)])
            start += len(call)
        return out


def _as_error(answer, param: str | None):
    if isinstance(answer, dict) and set(answer) == {"error"}:
        return invalid_request(answer["error"], param)
    return answer


class ModelDeployment:
    """Base of the model deployments: `model` is what it loaded, `batches` its batch counter (if
    it batches)."""
    model: LoadedModel
    batches: _Batches | None = None

    def info(self) -> dict:
        """Its entry in /v1/models."""
        return {**self.model.info(), **({"served": self.batches.served} if self.batches else {})}
