"""The OpenAI-compatible routes of the ingress: /v1/embeddings and /v1/chat/completions, in the
shapes of OpenAI's API as the official SDKs send and parse them (the SDK's default base64
embeddings, stop sequences, n choices, streamed usage). Mixed into the Ingress deployment, whose
helpers (`_handle`, `_call`, `_batched`, `_text`, `limits`) they use."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import uuid

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from serving.errors import ApiError, error_body, limit
from serving.schemas import ChatRequest, EmbeddingsRequest, EmbeddingsResponse

router = APIRouter()


def as_base64(vector: list[float]) -> str:
    """Little-endian float32 bytes, base64: what the openai SDK decodes (numpy's float32 or
    array('f')) back into the same float32 values."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


class OpenAIRoutes:
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

    @router.post("/v1/embeddings", response_model=EmbeddingsResponse)
    async def embeddings(self, req: EmbeddingsRequest) -> dict:
        texts = [req.input] if isinstance(req.input, str) else req.input
        limit(len(texts) <= self.limits.max_batch_inputs,
              f"{len(texts)} inputs exceed the limit of {self.limits.max_batch_inputs}", "input")
        for i, text in enumerate(texts):
            self._text(f"input.{i}", text)
        info = await self._model("retriever", "embeddings", req.model)
        size = info["dimensions"]
        if req.dimensions is not None and req.dimensions != size:
            # The vectors are not trained to keep their meaning when cut (not Matryoshka): no truncation.
            why = "exceeds the model's" if req.dimensions > size else "is not the model's; its vectors cannot be cut to"
            raise ApiError(400, "invalid_request", f"dimensions={req.dimensions} {why} {size} dimensions "
                           f"(omit dimensions or send {size})", "dimensions")
        outs = await asyncio.gather(*(self._batched("retriever", "embeddings", "embed_many", t) for t in texts))
        encode = as_base64 if req.encoding_format == "base64" else list
        tokens = sum(out["tokens"] for out in outs)
        return {"object": "list", "model": req.model or info["id"],
                "data": [{"object": "embedding", "index": i, "embedding": encode(out["embedding"])}
                         for i, out in enumerate(outs)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

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
