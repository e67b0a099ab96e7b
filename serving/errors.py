"""Errors of the HTTP surface, in OpenAI's shape so that OpenAI SDKs raise their typed errors:
`{"error": {"message", "type", "param", "code"}}` with OpenAI's statuses (400 for a request that
fails validation or a limit, 401 without the API key, 404 for an unknown route, model or missing
capability). `code` is bert4ray's stable, machine-readable reason; `type` follows from the status.

One convention from the models to the client: a deployment answers a request it cannot serve (a
client's mistake, or something the server was not started with) with the ApiError the client
gets: in that request's place among a batch's answers (a batch must not fail for one request), or
raised by a single-request method. The ingress raises it as it is, and the ApiError, the
validation handler and the middleware all write the same body (`error_body`). Nothing a client
sends can produce a 500 or stall a replica."""

from __future__ import annotations

import hmac
import json
import os

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def error_type(status: int) -> str:
    """OpenAI's `type` for a status (the SDKs pick their exception class by the status itself)."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(status: int, code: str, message: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param

    def __reduce__(self):
        # Deployments send it to the ingress: pickle every field, not only the message.
        return ApiError, (self.status, self.code, self.message, self.param)


def invalid_request(message: str, param: str | None = None) -> ApiError:
    """A request the model rejects (e.g. decoding settings the decoder refuses): 400."""
    return ApiError(400, "invalid_request", message, param)


def error_response(status: int, code: str, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=error_body(status, code, message, param))


def limit(ok: bool, message: str, param: str | None = None) -> None:
    """A per-request bound (Limits): 400, as OpenAI answers an input beyond a model's limits."""
    if not ok:
        raise ApiError(400, "limit_exceeded", message, param)


def _where(err: dict) -> str | None:
    return ".".join(str(x) for x in err.get("loc", ()) if x != "body") or None


def _describe(errors) -> str:
    return "; ".join(f"{_where(err) or 'body'}: {err.get('msg', 'invalid')}" for err in errors[:5])


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "invalid_json", "request body is not valid JSON: " + _describe(errors))
        return error_response(400, "invalid_request", _describe(errors), _where(errors[0]) if errors else None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    _document_errors(app)


def _document_errors(app: FastAPI) -> None:
    """OpenAPI: FastAPI lists a 422 with its own body on every route that takes a body; bert4ray
    answers those requests with a 400 and the error body above, so the schema says that."""
    from serving.schemas import ErrorResponse
    build = app.openapi

    def openapi() -> dict:
        schema = build()                                   # FastAPI caches it: patched once
        defs = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(defs.pop("$defs", {}))
        components["ErrorResponse"] = defs
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                if responses.pop("422", None) is not None:
                    responses["400"] = {"description": "Bad request (validation or limit)", "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        return schema
    app.openapi = openapi


class GuardMiddleware:
    """Pure ASGI middleware (no buffering of responses, so streaming passes through):
    - API key: when the environment variable named by `api_key_env` is set, every route but
      /healthz needs `Authorization: Bearer <key>` or `X-API-Key: <key>` (401 otherwise);
    - POST bodies must be `application/json` (415) and at most `max_body_bytes` (413);
    - bodies that are not UTF-8 are refused (400) before any handler sees them."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, api_key_env: str = "BERT4RAY_API_KEY"):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.api_key = os.environ.get(api_key_env) or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if self.api_key and path != "/healthz" and not self._authorized(headers):
            await self._reject(send, 401, "unauthorized", "missing or wrong API key "
                               "(send 'Authorization: Bearer <key>' or 'X-API-Key: <key>')")
            return
        if scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            await self._reject(send, 415, "unsupported_media_type",
                               f"POST bodies must be application/json, got '{ctype or 'none'}'")
            return
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._reject(send, 413, "payload_too_large",
                               f"request body of {declared} bytes exceeds the limit of {self.max_body_bytes}")
            return
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                await self._reject(send, 413, "payload_too_large",
                                   f"request body exceeds the limit of {self.max_body_bytes} bytes")
                return
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            await self._reject(send, 400, "invalid_encoding", f"request body is not valid UTF-8 ({exc.reason} "
                               f"at byte {exc.start})")
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        await self.app(scope, replay, send)

    def _authorized(self, headers: dict[str, str]) -> bool:
        given = headers.get("x-api-key") or ""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return bool(given) and hmac.compare_digest(given.encode(), self.api_key.encode())

    @staticmethod
    async def _reject(send: Send, status: int, code: str, message: str) -> None:
        payload = json.dumps(error_body(status, code, message)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
