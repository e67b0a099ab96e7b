"""Multi-turn chat: the plain logic behind /v1/chat/completions (OpenAI chat shape).

Messages map onto dialogue turns: every user and assistant message is one turn, in order; system
messages are not part of a chit-chat LM's input and are dropped. The reply is generated with the
cached decoder, streamed token by token when asked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from components.dialog import DialogueModel
from components.weights import model_fingerprint


class Chatbot:
    def __init__(self, model_dir: str | Path, max_length: int = 256):
        self.model_dir = Path(model_dir)
        self.dialogue = DialogueModel.from_pretrained(self.model_dir, max_length=max_length)
        self.fingerprint = model_fingerprint(self.model_dir)

    @property
    def name(self) -> str:
        return self.model_dir.name

    @staticmethod
    def _turns(request: dict) -> list[str]:
        return [m["content"] for m in request["messages"] if m["role"] in ("user", "assistant")]

    @staticmethod
    def _decoding(request: dict) -> dict:
        temperature = request.get("temperature", 1.0)
        return {"strategy": "greedy" if temperature == 0 else "sample",
                "temperature": temperature or 1.0, "top_p": request.get("top_p"), "top_k": request.get("top_k"),
                "consistent": bool(request.get("consistent")), "max_new_tokens": request["max_tokens"],
                "seed": request.get("seed")}

    def complete(self, request: dict) -> dict:
        turns = self._turns(request)
        reply = self.dialogue.chat(turns, self._decoding(request))
        return {"text": reply.text, "finish_reason": "stop" if reply.finish_reason == "eos" else "length",
                "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                          "total_tokens": reply.prompt_tokens + reply.completion_tokens}}

    def stream(self, request: dict) -> Iterator[str | dict]:
        """Text deltas as they are decoded, then {"finish_reason": ...}."""
        finish = "length"
        for piece in self.dialogue.stream_chat(self._turns(request), self._decoding(request)):
            if isinstance(piece, str):
                yield piece
            else:
                finish = "stop" if piece.finish_reason == "eos" else "length"
        yield {"finish_reason": finish}
