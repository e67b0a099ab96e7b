"""The one FastAPI ingress: routes, limits, timeouts and errors; composes the model deployments
through DeploymentHandles. Its own routes are /healthz, /v1/models and the demo page; every
capability's routes are mixed in from its module (serving/capabilities/, the registry in
serving/registry.py). Routes whose capability is not deployed answer 404 with the usual error body.

What a capability's routes may use of the ingress: `self.limits` (Limits), `self._text(field,
text)` (the text length limit), `self._batched(capability, what, method, request)` (one request's
answer from a `*_many` method, batched with the requests around it), `self._handle(capability,
what)` and `self._call(response)` (any other deployment call, with the timeout), and
`self._model(capability, what, requested)` (the deployment's /v1/models info). A deployment's
answer that is an ApiError is raised (serving/errors.py)."""


import asyncio
import time
from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from ray import serve
from ray.exceptions import RayActorError, RayTaskError

from serving.coalescer import Coalescer
from serving.deployments import Batching
from serving.errors import ApiError, GuardMiddleware, install_error_handlers, limit
from serving.registry import capabilities
from serving.schemas import Limits


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
install_error_handlers(api)


async def _await(response):
    return await response


def _raise_errors(answer):
    """A deployment's answer to one request, or the ApiError it answered with, raised."""
    if isinstance(answer, ApiError):
        raise answer
    return answer


class IngressBase:
    def __init__(self, limits: dict | None = None, api_key_env: str = "BERT4RAY_API_KEY",
                 batching: dict | None = None, inflight_calls: int = 2, **deployments):
        """deployments: a handle per deployed capability, by its name (absent: not deployed).
        inflight_calls: calls to one model method outstanding at once (build_app: two per model
        replica, so that a replica has its next batch queued while it computes one)."""
        names = [c.name for c in capabilities()]
        if unknown := sorted(set(deployments) - set(names)):
            raise TypeError(f"no capability named {', '.join(unknown)} (registered: {', '.join(names)})")
        self.limits = Limits(**(limits or {}))
        _Settings.limits, _Settings.api_key_env = self.limits, api_key_env
        self.handles = {name: deployments.get(name) for name in names}
        settings = Batching(**(batching or {}))
        self.batching = {"max_batch_size": settings.max_batch_size, "wait_s": settings.batch_wait_timeout_s,
                         "inflight": inflight_calls} if settings.enabled else None
        self.coalescers: dict[tuple[str, str], Coalescer] = {}
        self.model_infos: dict[str, dict] = {}          # capability -> its deployment's info, once asked
        self.started = int(time.time())

    # --- helpers for the routes -------------------------------------------------------------
    def _handle(self, name: str, what: str):
        handle = self.handles.get(name)
        if handle is None:
            raise ApiError(404, "not_deployed", f"{what} is not available: no {name} model is loaded")
        return handle

    def _timeout(self) -> ApiError:
        return ApiError(504, "timeout", f"request took longer than {self.limits.timeout_s:g} s")

    async def _call(self, response):
        try:          # asyncio.timeout, not wait_for: no extra task (and event-loop hop) per call
            async with asyncio.timeout(self.limits.timeout_s):
                return await _await(response)
        except TimeoutError:
            response.cancel()
            raise self._timeout() from None
        except RayActorError:
            # The replica died with the request on it (Serve starts a replacement): tell the client
            # to retry, in the usual error body, rather than a bare 500.
            raise ApiError(503, "unavailable", "the model replica handling this request stopped; "
                                               "retry shortly") from None
        except RayTaskError as exc:
            if isinstance(exc.cause, ApiError):        # raised by a deployment for the client
                raise exc.cause from None
            raise

    async def _batched(self, name: str, what: str, method: str, request):
        """One request's answer from `method` of deployment `name` (a `*_many` method: a list of
        requests in, their answers out). With batching on, it goes in one call with the requests
        that arrive with it; off, in a call of its own, as many at once as the clients send."""
        remote = getattr(self._handle(name, what), method)
        if self.batching is None:
            return _raise_errors((await self._call(remote.remote([request])))[0])
        if (name, method) not in self.coalescers:        # created in the replica's event loop
            async def send(items: list) -> list:
                return await self._call(remote.remote(items))
            self.coalescers[(name, method)] = Coalescer(send, **self.batching)
        try:          # the time queued for a free call counts too; an ApiError answer is raised
            async with asyncio.timeout(self.limits.timeout_s):
                return await self.coalescers[(name, method)].submit(request)
        except TimeoutError:
            raise self._timeout() from None

    def _text(self, field: str, text: str) -> None:
        limit(len(text) <= self.limits.max_text_chars,
              f"{field} has {len(text)} characters; the limit is {self.limits.max_text_chars}", field)

    async def _model(self, capability: str, what: str, requested: str | None) -> dict:
        """The info of the deployment behind `capability` (cached: it does not change while the
        app runs), after checking that a requested model name is its id or the capability."""
        handle = self._handle(capability, what)
        if capability not in self.model_infos:
            self.model_infos[capability] = await self._call(handle.info.remote())
        info = self.model_infos[capability]
        if requested is not None and requested not in (info["id"], capability):
            raise ApiError(404, "model_not_found", f"model '{requested}' is not served here; {what} are served by "
                           f"'{info['id']}' (or say '{capability}'; GET /v1/models lists the models)", "model")
        return info

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


def _ingress_class() -> type:
    """The ingress with every registered capability's routes mixed in."""
    mixins = []
    for capability in capabilities():
        if capability.routes is not None:
            api.include_router(capability.router)
            mixins.append(capability.routes)
    return type("Ingress", (*mixins, IngressBase), {"__module__": __name__, "__doc__": __doc__})


Ingress = serve.deployment(name="ingress", graceful_shutdown_wait_loop_s=0.5, graceful_shutdown_timeout_s=5)(
    serve.ingress(api)(_ingress_class()))
