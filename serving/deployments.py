"""Thin Ray Serve wrappers around the plain capability classes: they add dynamic batching
(`@serve.batch`, sizes from config), replica settings and nothing else."""

from __future__ import annotations

from ray import serve

from serving.model_store import resolve_model

# Short graceful shutdown: requests are small, and tests and `bert4ray serve` stop faster.
_SHUTDOWN = dict(graceful_shutdown_wait_loop_s=0.5, graceful_shutdown_timeout_s=5)


def _configure_batching(method, batching: dict) -> None:
    size = batching.get("max_batch_size", 16) if batching.get("enabled", True) else 1
    method.set_max_batch_size(size)
    method.set_batch_wait_timeout_s(batching.get("batch_wait_timeout_s", 0.005) if size > 1 else 0.0)


@serve.deployment(name="retriever", **_SHUTDOWN)
class RetrieverDeployment:
    def __init__(self, model: str, index: str | None, batching: dict, max_length: int = 64):
        from serving.retriever import Retriever

        self.retriever = Retriever(resolve_model(model), index, max_length=max_length)
        _configure_batching(self._search, batching)
        _configure_batching(self._embed, batching)

    def info(self) -> dict:
        r = self.retriever
        return {"id": r.name, "fingerprint": r.fingerprint, "kind": "simbert-encoder",
                "index_size": len(r.index) if r.index is not None else None}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _search(self, items: list[tuple[str, int]]) -> list[list[dict]]:
        return self.retriever.search([q for q, _ in items], [k for _, k in items])

    async def search(self, query: str, k: int) -> list[dict]:
        return await self._search((query, k))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _embed(self, texts: list[str]) -> list[list[float]]:
        return self.retriever.embed(texts)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        import asyncio
        return list(await asyncio.gather(*(self._embed(t) for t in texts)))


@serve.deployment(name="generator", **_SHUTDOWN)
class GeneratorDeployment:
    def __init__(self, model: str, batching: dict, max_length: int = 64):
        from serving.generator import Generator

        self.generator = Generator(resolve_model(model), max_length=max_length)
        _configure_batching(self._similar, batching)

    def info(self) -> dict:
        g = self.generator
        return {"id": g.name, "fingerprint": g.fingerprint, "kind": "simbert-generator"}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _similar(self, items: list[dict]) -> list[list[dict] | dict]:
        return self.generator.similar_many(items)

    async def similar(self, item: dict) -> list[dict] | dict:
        """The candidates, or {"error": message} when the decoder rejects the settings."""
        return await self._similar(item)


@serve.deployment(name="chat", **_SHUTDOWN)
class ChatDeployment:
    def __init__(self, model: str, max_length: int = 256):
        from serving.chat import Chatbot

        self.bot = Chatbot(resolve_model(model), max_length=max_length)

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

    def __init__(self, model: str, batching: dict):
        from components.attribution import Attributor
        from components.weights import model_fingerprint

        model_dir = resolve_model(model)
        self.attributor = Attributor.from_pretrained(model_dir)
        self.name, self.fingerprint = model_dir.name, model_fingerprint(model_dir)
        _configure_batching(self._attribute, batching)

    def info(self) -> dict:
        return {"id": self.name, "fingerprint": self.fingerprint, "kind": "classifier",
                "labels": self.attributor.labels}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _attribute(self, items: list[dict]) -> list[dict]:
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

    async def attribute(self, item: dict) -> dict:
        return await self._attribute(item)


@serve.deployment(name="parser", **_SHUTDOWN)
class ParserDeployment:
    """Perturbed Masking. Requests that arrive together are segmented (and parsed) together: the
    masked copies of all their texts share forward passes."""

    def __init__(self, model: str, batching: dict):
        from serving.parser import Parser

        self.parser = Parser(resolve_model(model))
        _configure_batching(self._segment, batching)
        _configure_batching(self._parse, batching)

    def info(self) -> dict:
        return self.parser.info()

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _segment(self, texts: list[str]) -> list[list[str]]:
        return self.parser.segment_many(texts)

    async def segment(self, text: str) -> list[str]:
        return await self._segment(text)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _parse(self, items: list[dict]) -> list[dict]:
        return self.parser.parse_many(items)

    async def parse(self, item: dict) -> dict:
        return await self._parse(item)
