"""Multi-turn chat: the plain logic behind /v1/chat/completions (OpenAI chat shape).

Messages map onto dialogue turns: every user and assistant message is one turn, in order; system
and developer messages are not part of a chit-chat LM's input and are dropped. Each of the `n`
choices is its own reply from the cached decoder, streamed token by token; a reply that reaches a
stop sequence ends there (the decoder stops too), without the stop text.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from components.dialog import DialogueModel, encode_dialogue
from serving.loaded_model import LoadedModel

SEED_SPACE = 2**63


class StopText:
    """Cuts a reply that arrives in pieces before the first of its stop sequences. The tail that
    could be the beginning of a stop sequence is held back until the next piece shows whether it
    is, so no part of a stop text is ever shown."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.text = ""                 # everything received
        self.shown = 0                 # characters of it handed out
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Receives a piece; returns the text that can be shown now."""
        self.text += piece
        found = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        if found:
            self.stopped = True
            end = min(found)
        else:
            end = len(self.text) - self._undecided()
        out = self.text[self.shown:end]
        self.shown = max(self.shown, end)
        return out

    def flush(self) -> str:
        """At the end of a reply that met no stop sequence: the text held back."""
        out = "" if self.stopped else self.text[self.shown:]
        self.shown = len(self.text)
        return out

    def _undecided(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop sequence."""
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.text)), best, -1):
                if self.text.endswith(stop[:k]):
                    best = k
                    break
        return best


class Chatbot(LoadedModel):
    kind = "dialogue-lm"

    def __init__(self, model_dir: str | Path, max_length: int = 256, device: str | None = None,
                 dtype: str | None = None):
        super().__init__(model_dir)
        self.dialogue = DialogueModel.from_pretrained(self.model_dir, max_length=max_length, device=device,
                                                      dtype=dtype)

    @staticmethod
    def _turns(request: dict) -> list[str]:
        return [m["content"] for m in request["messages"] if m["role"] in ("user", "assistant")]

    @staticmethod
    def _decoding(request: dict, choice: int = 0) -> dict:
        temperature = request.get("temperature")
        temperature = 1.0 if temperature is None else temperature
        seed = request.get("seed")
        return {"strategy": "greedy" if temperature == 0 else "sample",
                "temperature": temperature or 1.0, "top_p": request.get("top_p"), "top_k": request.get("top_k"),
                "consistent": bool(request.get("consistent")), "max_new_tokens": request["max_tokens"],
                # choices differ by their seed; choice 0 keeps the request's own
                "seed": None if seed is None else (seed + choice) % SEED_SPACE}

    def _prompt_tokens(self, turns: list[str], max_tokens: int) -> int:
        """The prompt's length as the decoder builds it (history cut to leave room for the reply),
        for a reply that a stop sequence ended before the decoder reported it."""
        d = self.dialogue
        room = min(max_tokens, d.max_length // 2)
        return len(encode_dialogue(d.tokenizer, turns, d.max_length, d.max_history, reply_room=room,
                                   for_reply=True).input_ids)

    def _reply(self, turns: list[str], decoding: dict, stops: list[str]) -> Iterator[str | dict]:
        """One choice: its text as it may be shown, then {"finish_reason", "prompt_tokens",
        "completion_tokens"}."""
        cut, reply = StopText(stops), None
        pieces = self.dialogue.stream_chat(turns, decoding)
        try:
            for piece in pieces:
                if not isinstance(piece, str):
                    reply = piece
                    continue
                if shown := cut.feed(piece):
                    yield shown
                if cut.stopped:
                    break
        finally:
            pieces.close()                           # a stop sequence ends the decoding as well
        if cut.stopped:
            yield {"finish_reason": "stop", "prompt_tokens": self._prompt_tokens(turns, decoding["max_new_tokens"]),
                   # the tokens generated so far, stop text included, as the tokenizer reads them
                   "completion_tokens": len(self.dialogue.tokenizer.tokenize(cut.text))}
            return
        if rest := cut.flush():
            yield rest
        yield {"finish_reason": "stop" if reply.finish_reason == "eos" else "length",
               "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}

    def stream(self, request: dict) -> Iterator[dict]:
        """{"index", "content"} text deltas and {"index", "finish_reason"} for each choice in turn,
        then {"usage"} (the prompt counted once, the completions summed, as OpenAI counts)."""
        turns, stops = self._turns(request), list(request.get("stop") or [])
        prompt, completion = 0, 0
        for index in range(request.get("n") or 1):
            for event in self._reply(turns, self._decoding(request, index), stops):
                if isinstance(event, str):
                    yield {"index": index, "content": event}
                else:
                    yield {"index": index, "finish_reason": event["finish_reason"]}
                    prompt, completion = event["prompt_tokens"], completion + event["completion_tokens"]
        yield {"usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                         "total_tokens": prompt + completion}}

    def complete(self, request: dict) -> dict:
        """{"choices": [{"index", "text", "finish_reason"}], "usage"}."""
        choices: list[dict] = []
        usage = None
        for event in self.stream(request):
            if "usage" in event:
                usage = event["usage"]
                continue
            if event["index"] == len(choices):
                choices.append({"index": event["index"], "text": "", "finish_reason": None})
            choice = choices[event["index"]]
            choice["text"] += event.get("content", "")
            choice["finish_reason"] = event.get("finish_reason", choice["finish_reason"])
        return {"choices": choices, "usage": usage}
