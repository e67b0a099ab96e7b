"""Multi-turn chat with a dialogue LM (--chat-model): POST /v1/chat/completions in the shape of
OpenAI's API as the official SDKs send and parse it (stop sequences, n choices, streamed usage)."""

from __future__ import annotations

import json
import time
import uuid

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from serving.deployments import ModelDeployment, model_deployment
from serving.errors import ApiError, error_body, limit
from serving.model_store import resolve_model
from serving.registry import AppArg, Capability, register
from serving.schemas import ChatRequest


@model_deployment("chat")
class ChatDeployment(ModelDeployment):
    def __init__(self, model: str, max_length: int = 256, device: str | None = None, dtype: str | None = None):
        from serving.chat import Chatbot

        self.model = Chatbot(resolve_model(model), max_length=max_length, device=device, dtype=dtype)

    def complete(self, request: dict) -> dict:
        return self.model.complete(request)

    def stream(self, request: dict):
        """Yields text deltas, then a final dict with the finish reason (a streaming handle call)."""
        yield from self.model.stream(request)


router = APIRouter()


class ChatRoutes:
    def _chat_item(self, req: ChatRequest) -> dict:
        """The request as the chat deployment takes it, within the limits."""
        limit(len(req.messages) <= self.limits.max_turns,
              f"{len(req.messages)} messages exceed the limit of {self.limits.max_turns}", "messages")
        for i, m in enumerate(req.messages):
            self._text(f"messages.{i}.content", m.content)
        if req.messages[-1].role != "user":
            raise ApiError(400, "invalid_request", "the last message must come from the user", "messages")
        stops = req.stops()
        for i, stop in enumerate(stops):
            self._text(f"stop.{i}", stop)
        given = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        max_tokens = req.max_completion_tokens or req.max_tokens or self.limits.max_new_tokens
        limit(max_tokens <= self.limits.max_new_tokens,
              f"{given}={max_tokens} exceeds the limit of {self.limits.max_new_tokens}", given)
        n = req.n or 1
        limit(n <= self.limits.max_n, f"n={n} exceeds the limit of {self.limits.max_n}", "n")
        return {"messages": [m.model_dump() for m in req.messages], "max_tokens": max_tokens, "n": n, "stop": stops,
                "temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k,
                "consistent": req.consistent, "seed": req.seed}

    @router.post("/v1/chat/completions")
    async def chat_completions(self, req: ChatRequest):
        item = self._chat_item(req)
        info = await self._model("chat", "chat completions", req.model)
        handle = self._handle("chat", "chat")
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": req.model or info["id"], "system_fingerprint": info["fingerprint"][:16]}
        if not req.stream:
            out = await self._call(handle.complete.remote(item))
            return {**head, "object": "chat.completion", "usage": out["usage"],
                    "choices": [{"index": c["index"], "finish_reason": c["finish_reason"], "logprobs": None,
                                 "message": {"role": "assistant", "content": c["text"]}} for c in out["choices"]]}
        usage = bool(req.stream_options and req.stream_options.include_usage)
        events = chat_events(handle.options(stream=True).stream.remote(item), head, usage)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _sse(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def chat_events(stream, head: dict, include_usage: bool):
    """Server-sent chunks from the chat deployment's events: each choice opens with its role, then
    its text deltas and its finish reason; with include_usage every chunk has `usage: null` and a
    last chunk without choices carries the usage; then [DONE]. An error after the stream started
    is reported in-band, in the error body (the SDKs raise it)."""
    extra = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict, finish: str | None = None) -> str:
        return _sse({**head, "object": "chat.completion.chunk", **extra,
                     "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}]})
    opened: set[int] = set()
    try:
        async for event in stream:
            if "usage" in event:
                if include_usage:
                    yield _sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": event["usage"]})
                continue
            index = event["index"]
            if index not in opened:
                opened.add(index)
                yield chunk(index, {"role": "assistant", "content": ""})
            if "content" in event:
                yield chunk(index, {"content": event["content"]})
            else:
                yield chunk(index, {}, event["finish_reason"])
    except Exception as exc:  # noqa: BLE001 - the stream has started; report in-band
        yield _sse(error_body(500, "generation_failed", (str(exc).splitlines() or [repr(exc)])[0][:200]))
    yield "data: [DONE]\n\n"


register(Capability(
    name="chat", deployment=ChatDeployment, enabled_by="chat_model",
    args=(AppArg("chat_model", "dialogue model directory or MLflow model URI"),),
    bind_args=lambda args, batching: (args.chat_model,),
    routes=ChatRoutes, router=router))
