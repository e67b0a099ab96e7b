"""The one FastAPI ingress: routes, limits, timeouts and errors; composes the capability
deployments through DeploymentHandles. Routes whose capability is not deployed answer 404 with
the usual error body. The OpenAI-compatible routes live in serving/openai_routes.py."""


import asyncio
import time
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from ray import serve
from ray.exceptions import RayActorError

from serving.coalescer import Coalescer
from serving.errors import ApiError, GuardMiddleware, install_error_handlers, limit, raise_for_error
from serving.openai_routes import OpenAIRoutes, router
from serving.schemas import (
    AttributeRequest,
    AttributeResponse,
    Limits,
    ParseRequest,
    ParseResponse,
    SearchRequest,
    SearchResponse,
    SegmentRequest,
    SegmentResponse,
    SimilarRequest,
    SimilarResponse,
)


class _Settings:
    """Per-process settings read by the middleware, set when the ingress replica starts."""
    limits = Limits()
    api_key_env = "BERT4RAY_API_KEY"


class _LazyGuard:
    def __init__(self, app):
        self.app = app
        self._guard = None

    async def __call__(self, scope, receive, send):
        if self._guard is None:
            self._guard = GuardMiddleware(self.app, _Settings.limits.max_body_bytes, _Settings.api_key_env)
        await self._guard(scope, receive, send)


api = FastAPI(title="bert4ray", version="0.1.0",
              description="SimBERT paraphrases and retrieval, embeddings, dialogue, attribution and parsing.")
api.add_middleware(_LazyGuard)
api.include_router(router)
install_error_handlers(api)


async def _await(response):
    return await response


@serve.deployment(name="ingress", graceful_shutdown_wait_loop_s=0.5, graceful_shutdown_timeout_s=5)
@serve.ingress(api)
class Ingress(OpenAIRoutes):
    def __init__(self, limits: dict | None = None, api_key_env: str = "BERT4RAY_API_KEY", retriever=None,
                 generator=None, chat=None, attributor=None, parser=None, extra: dict | None = None,
                 batching: dict | None = None, inflight_calls: int = 2):
        """inflight_calls: calls to one model method outstanding at once (build_app: two per model
        replica, so that a replica has its next batch queued while it computes one)."""
        self.limits = Limits(**(limits or {}))
        _Settings.limits, _Settings.api_key_env = self.limits, api_key_env
        self.handles = {"retriever": retriever, "generator": generator, "chat": chat, "attributor": attributor,
                        "parser": parser, **(extra or {})}
        batching = batching or {}
        self.batching = {"max_batch_size": batching.get("max_batch_size", 16),
                         "wait_s": batching.get("batch_wait_timeout_s", 0.005),
                         "inflight": inflight_calls} if batching.get("enabled", True) else None
        self.coalescers: dict[tuple[str, str], Coalescer] = {}
        self.model_infos: dict[str, dict] = {}          # capability -> its deployment's info, once asked
        self.started = int(time.time())

    # --- helpers ----------------------------------------------------------------------------
    def _handle(self, name: str, what: str):
        handle = self.handles.get(name)
        if handle is None:
            raise ApiError(404, "not_deployed", f"{what} is not available: no {name} model is loaded")
        return handle

    def _timeout(self) -> ApiError:
        return ApiError(504, "timeout", f"request took longer than {self.limits.timeout_s:g} s")

    async def _call(self, response):
        try:
            return await asyncio.wait_for(_await(response), self.limits.timeout_s)
        except TimeoutError:
            response.cancel()
            raise self._timeout() from None
        except RayActorError:
            # The replica died with the request on it (Serve starts a replacement): tell the client
            # to retry, in the usual error body, rather than a bare 500.
            raise ApiError(503, "unavailable", "the model replica handling this request stopped; "
                                               "retry shortly") from None

    async def _batched(self, name: str, what: str, method: str, request):
        """One request's answer from `method` of deployment `name` (a `*_many` method: a list of
        requests in, their answers out). With batching on, it goes in one call with the requests
        that arrive with it; off, in a call of its own, as many at once as the clients send."""
        remote = getattr(self._handle(name, what), method)
        if self.batching is None:
            return (await self._call(remote.remote([request])))[0]
        if (name, method) not in self.coalescers:        # created in the replica's event loop
            async def send(items: list) -> list:
                return await self._call(remote.remote(items))
            self.coalescers[(name, method)] = Coalescer(send, **self.batching)
        try:          # the time queued for a free call counts too
            return await asyncio.wait_for(self.coalescers[(name, method)].submit(request), self.limits.timeout_s)
        except TimeoutError:
            raise self._timeout() from None

    def _text(self, field: str, text: str) -> None:
        limit(len(text) <= self.limits.max_text_chars,
              f"{field} has {len(text)} characters; the limit is {self.limits.max_text_chars}", field)

    # --- routes -----------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/v1/models")
    async def models(self) -> dict:
        data = []
        for name, handle in self.handles.items():
            if handle is not None:
                info = await self._call(handle.info.remote())
                # created: when this server loaded it (OpenAI's Model has it; a directory has no birth date)
                data.append({"object": "model", "owned_by": "bert4ray", "created": self.started,
                             "capability": name, **info})
        return {"object": "list", "data": data}

    @api.get("/", response_class=HTMLResponse)
    async def demo(self) -> HTMLResponse:
        page = resources.files("serving").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(page)

    @api.post("/v1/similar", response_model=SimilarResponse)
    async def similar(self, req: SimilarRequest) -> dict:
        self._text("text", req.text)
        limit(req.n <= self.limits.max_n, f"n={req.n} exceeds the limit of {self.limits.max_n}", "n")
        limit(req.k <= self.limits.max_k, f"k={req.k} exceeds the limit of {self.limits.max_k}", "k")
        steps = req.decoding.max_new_tokens or self.limits.max_new_tokens
        limit(steps <= self.limits.max_new_tokens,
              f"decoding.max_new_tokens={steps} exceeds the limit of {self.limits.max_new_tokens}",
              "decoding.max_new_tokens")
        limit(req.decoding.min_new_tokens <= steps,
              f"decoding.min_new_tokens={req.decoding.min_new_tokens} exceeds max_new_tokens={steps}",
              "decoding.min_new_tokens")
        item = req.model_dump()
        item["decoding"]["max_new_tokens"] = steps
        out = await self._batched("generator", "paraphrase generation", "similar_many", item)
        return {"candidates": raise_for_error(out, "decoding")}

    @api.post("/v1/search", response_model=SearchResponse)
    async def search(self, req: SearchRequest) -> dict:
        self._text("query", req.query)
        limit(req.k <= self.limits.max_k, f"k={req.k} exceeds the limit of {self.limits.max_k}", "k")
        # A replica without an index answers with LookupError, rather than every request paying an
        # extra round trip to ask first.
        try:
            hits = await self._batched("retriever", "search", "search_many", (req.query, req.k))
        except LookupError:
            raise ApiError(404, "no_index", "no index is loaded: start the server with --index DIR") from None
        return {"hits": hits}

    @api.post("/v1/attribute", response_model=AttributeResponse,
              responses={200: {"content": {"text/html": {}}, "description": "JSON, or the heat map for Accept: text/html"}})
    async def attribute(self, req: AttributeRequest, request: Request):
        self._text("text", req.text)
        limit(req.steps <= self.limits.max_steps, f"steps={req.steps} exceeds the limit of {self.limits.max_steps}",
              "steps")
        out = raise_for_error(await self._batched("attributor", "attribution", "attribute_many", req.model_dump()))
        accept = request.headers.get("accept", "")
        if "text/html" in accept and "application/json" not in accept:
            from components.attribution import Attribution
            from components.attribution_html import render_html
            return HTMLResponse(render_html(Attribution(**out)))
        return {"label": out["label"], "prob": out["prob"], "target": out["target_label"], "tokens": out["tokens"],
                "scores": out["scores"], "norms": out["norms"], "delta": out["delta"]}

    @api.post("/v1/segment", response_model=SegmentResponse)
    async def segment(self, req: SegmentRequest) -> dict:
        self._text("text", req.text)
        return {"words": await self._batched("parser", "segmentation", "segment_many", req.text)}

    @api.post("/v1/parse", response_model=ParseResponse)
    async def parse(self, req: ParseRequest) -> dict:
        self._text("text", req.text)
        return raise_for_error(await self._batched("parser", "parsing", "parse_many", req.model_dump()))
