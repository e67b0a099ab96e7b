"""Thin Ray Serve wrappers around the plain capability classes: they add dynamic batching, replica
settings and nothing else.

Batching happens in two places. The ingress gathers the requests that arrive together and sends a
deployment one call with all of them (the `*_many` methods: a list of requests in, a list of
answers out, in order), so Serve's per-call work (routing, serialisation, the replica's queue) is
paid once per batch, not once per request. Here, `@serve.batch` merges the calls that queued up
while the replica was busy (from several ingress replicas, or direct handle callers) without
waiting for more, and the model computes their requests in batches of at most `max_batch_size`."""

from __future__ import annotations

from ray import serve

from serving.model_store import resolve_model

# Short graceful shutdown: requests are small, and tests and `bert4ray serve` stop faster.
_SHUTDOWN = dict(graceful_shutdown_wait_loop_s=0.5, graceful_shutdown_timeout_s=5)


def batch_size(batching: dict) -> int:
    return batching.get("max_batch_size", 16) if batching.get("enabled", True) else 1


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

    def answer_each(self, fn, calls: list[list]) -> list[list]:
        """Runs `fn` (a list of requests → a list of answers) over every call's requests, at most
        `size` at a time, and hands each call its own answers back."""
        flat = [request for call in calls for request in call]
        answers = []
        for start in range(0, len(flat), self.size):
            answers += fn(flat[start:start + self.size])
            self.served["batches"] += 1
        self.served["requests"] += len(flat)
        out, start = [], 0
        for call in calls:
            out.append(answers[start:start + len(call)])
            start += len(call)
        return out


@serve.deployment(name="retriever", **_SHUTDOWN)
class RetrieverDeployment:
    def __init__(self, model: str, index: str | None, batching: dict, max_length: int = 64,
                 device: str | None = None, dtype: str | None = None):
        from serving.retriever import Retriever

        self.retriever = Retriever(resolve_model(model), index, max_length=max_length, device=device, dtype=dtype)
        self.batches = _Batches(batching, self.search_many, self.embed_many)

    def info(self) -> dict:
        r = self.retriever
        return {"id": r.name, "fingerprint": r.fingerprint, "kind": "simbert-encoder", "dimensions": r.dimensions,
                "index_size": len(r.index) if r.index is not None else None, "served": self.batches.served}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def search_many(self, calls: list[list[tuple[str, int]]]) -> list[list[list[dict]]]:
        """Each call: [(query, k), ...] → the hits of each query. LookupError without an index."""
        def search(items):
            return self.retriever.search([q for q, _ in items], [k for _, k in items])
        return self.batches.answer_each(search, calls)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def embed_many(self, calls: list[list[str]]) -> list[list[dict]]:
        """Each call: texts → their {"embedding", "tokens"}."""
        return self.batches.answer_each(self.retriever.embed, calls)


@serve.deployment(name="generator", **_SHUTDOWN)
class GeneratorDeployment:
    def __init__(self, model: str, batching: dict, max_length: int = 64, device: str | None = None,
                 dtype: str | None = None):
        from serving.generator import Generator

        self.generator = Generator(resolve_model(model), max_length=max_length, device=device, dtype=dtype)
        self.batches = _Batches(batching, self.similar_many)

    def info(self) -> dict:
        g = self.generator
        return {"id": g.name, "fingerprint": g.fingerprint, "kind": "simbert-generator", "served": self.batches.served}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def similar_many(self, calls: list[list[dict]]) -> list[list[list[dict] | dict]]:
        """Each call: [{"text", "n", "k", "decoding"}, ...] → each request's candidates, or
        {"error": message} when the decoder rejects its settings."""
        return self.batches.answer_each(self.generator.similar_many, calls)


@serve.deployment(name="chat", **_SHUTDOWN)
class ChatDeployment:
    def __init__(self, model: str, max_length: int = 256, device: str | None = None, dtype: str | None = None):
        from serving.chat import Chatbot

        self.bot = Chatbot(resolve_model(model), max_length=max_length, device=device, dtype=dtype)

    def info(self) -> dict:
        return {"id": self.bot.name, "fingerprint": self.bot.fingerprint, "kind": "dialogue-lm"}

    def complete(self, request: dict) -> dict:
        return self.bot.complete(request)

    def stream(self, request: dict):
        """Yields text deltas, then a final dict with the finish reason (a streaming handle call)."""
        yield from self.bot.stream(request)


@serve.deployment(name="attributor", **_SHUTDOWN)
class AttributorDeployment:
    """Integrated Gradients. Requests with the same options are attributed together: texts of equal
    length share forward/backward passes (components.attribution never pads)."""

    def __init__(self, model: str, batching: dict, device: str | None = None, dtype: str | None = None):
        from components.attribution import Attributor
        from components.weights import model_fingerprint

        model_dir = resolve_model(model)
        self.attributor = Attributor.from_pretrained(model_dir, device=device, dtype=dtype)
        self.name, self.fingerprint = model_dir.name, model_fingerprint(model_dir)
        self.batches = _Batches(batching, self.attribute_many)

    def info(self) -> dict:
        return {"id": self.name, "fingerprint": self.fingerprint, "kind": "classifier",
                "labels": self.attributor.labels, "served": self.batches.served}

    def _attribute(self, items: list[dict]) -> list[dict]:
        out: list[dict | None] = [None] * len(items)
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(repr(sorted((k, v) for k, v in item.items() if k != "text")), []).append(i)
        for rows in groups.values():
            o = items[rows[0]]
            try:
                results = self.attributor.attribute_batch(
                    [items[i]["text"] for i in rows], target=o["target"], n_steps=o["steps"], rule=o["rule"],
                    quantity=o["quantity"], baseline=o["baseline"])
                for i, r in zip(rows, results):
                    out[i] = r.to_dict()
            except ValueError as exc:               # e.g. an unknown target label: the client's mistake
                for i in rows:
                    out[i] = {"error": str(exc)}
        return out

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def attribute_many(self, calls: list[list[dict]]) -> list[list[dict]]:
        """Each call: [{"text", "target", "steps", ...}, ...] → each attribution, or {"error"}."""
        return self.batches.answer_each(self._attribute, calls)


@serve.deployment(name="parser", **_SHUTDOWN)
class ParserDeployment:
    """Perturbed Masking. Requests that arrive together are segmented (and parsed) together: the
    masked copies of all their texts share forward passes."""

    def __init__(self, model: str, batching: dict, device: str | None = None, dtype: str | None = None):
        from serving.parser import Parser

        self.parser = Parser(resolve_model(model), device=device, dtype=dtype)
        self.batches = _Batches(batching, self.segment_many, self.parse_many)

    def info(self) -> dict:
        return {**self.parser.info(), "served": self.batches.served}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def segment_many(self, calls: list[list[str]]) -> list[list[list[str]]]:
        """Each call: texts → their words."""
        return self.batches.answer_each(self.parser.segment_many, calls)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def parse_many(self, calls: list[list[dict]]) -> list[list[dict]]:
        """Each call: [{"text", ...}, ...] → each parse, or {"error"}."""
        return self.batches.answer_each(self.parser.parse_many, calls)
