"""Error handling for the HTTP surface: every client mistake becomes a 4xx with
`{"error": {"code", "message"}}`; nothing a client sends can produce a 500 or stall a replica."""

from __future__ import annotations

import hmac
import json
import os

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


def _describe(errors) -> str:
    parts = []
    for err in errors[:5]:
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "invalid_json", "request body is not valid JSON: " + _describe(errors))
        return error_response(422, "invalid_request", _describe(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))


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
        payload = json.dumps({"error": {"code": code, "message": message}}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
