"""Multi-turn dialogue as one causal LM sequence (DialoGPT / CDial-GPT style).

    [CLS] u1 [SEP] u2 [SEP] ... un [SEP]

Segment ids alternate per speaker, counted back from the end: the last turn (the response, or the
reply being generated) has segment 1, the turn before it 0, and so on. Counting from the end keeps
every speaker's segment stable when old turns are cut to fit `max_length` / `max_history`, and makes
the reply's segment at inference the one it had in training. [CLS] takes the first kept turn's segment.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class EncodedDialogue:
    input_ids: list[int]
    segment_ids: list[int]
    turn_ids: list[int]          # per token: the index of its turn within the kept turns, -1 for [CLS]
    kept_turns: int
    next_segment: int            # segment of the reply that follows these turns


def speaker_segment(turn: int, n_turns: int) -> int:
    """Segment of turn `turn` (0-based) among `n_turns`: the last turn is 1, then alternating."""
    return (n_turns - 1 - turn + 1) % 2


def encode_dialogue(tokenizer, turns: list[str], max_length: int, max_history: int | None = None,
                    reply_room: int = 0, for_reply: bool = False) -> EncodedDialogue:
    """Encode the most recent turns that fit in `max_length - reply_room` tokens (at most
    `max_history` turns). The newest turn is always kept; if it alone is too long, its start is cut.

    Training encodes the whole dialogue (its last turn is the response, segment 1). Inference
    encodes the history with `for_reply=True`: segments are counted as if the reply were the last
    turn, so the reply is generated with segment 1 and the history's last turn has segment 0."""
    if not turns:
        raise ValueError("a dialogue needs at least one turn")
    budget = max_length - reply_room - 1                                  # minus [CLS]
    if budget < 2:
        raise ValueError(f"max_length {max_length} leaves no room for the dialogue")
    pieces: list[list[int]] = []
    used = 0
    recent = turns[-max_history:] if max_history else turns
    for text in reversed(recent):
        if not isinstance(text, str):
            raise TypeError(f"dialogue turns must be strings, got {type(text).__name__}")
        ids = tokenizer.encode(text, max_length=10**6)[0][1:-1] + [tokenizer.sep_id]   # drop [CLS]/[SEP], add [SEP]
        if used + len(ids) > budget:
            if not pieces:                                                 # newest turn alone too long
                pieces.append(ids[-budget:])
            break
        pieces.append(ids)
        used += len(ids)
    pieces.reverse()
    n = len(pieces)
    total = n + 1 if for_reply else n
    input_ids, segment_ids, turn_ids = [tokenizer.cls_id], [speaker_segment(0, total)], [-1]
    for i, ids in enumerate(pieces):
        input_ids += ids
        segment_ids += [speaker_segment(i, total)] * len(ids)
        turn_ids += [i] * len(ids)
    return EncodedDialogue(input_ids, segment_ids, turn_ids, n, speaker_segment(n, n + 1))


def lm_loss_mask(encoded: EncodedDialogue, mode: str) -> list[int]:
    """Which positions' next-token predictions count in the loss (aligned with input_ids[1:]):
    `all_turns` every utterance token after [CLS]; `last_turn` only the response's tokens and its [SEP]."""
    if mode not in ("all_turns", "last_turn"):
        raise ValueError(f"unknown loss mode {mode!r}; valid: all_turns, last_turn")
    targets = encoded.turn_ids[1:]
    last = encoded.kept_turns - 1
    if mode == "all_turns":
        return [1] * len(targets)
    return [1 if t == last else 0 for t in targets]


def pad_dialogues(batch: list[EncodedDialogue], pad_id: int) -> dict[str, torch.Tensor]:
    T = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    seg = torch.zeros(len(batch), T, dtype=torch.long)
    mask = torch.zeros(len(batch), T, dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        seg[i, :n] = torch.tensor(e.segment_ids)
        mask[i, :n] = 1
    return {"input_ids": ids, "segment_ids": seg, "attention_mask": mask}


@dataclass
class Reply:
    text: str
    finish_reason: str             # "eos" | "length"
    prompt_tokens: int
    completion_tokens: int


class DialogueModel:
    """A causal dialogue LM with its tokenizer: `chat(history)` and streaming `stream_chat(history)`."""

    def __init__(self, model, tokenizer, max_length: int = 256, max_history: int | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = min(max_length, model.config.max_position_embeddings)
        self.max_history = max_history

    @classmethod
    def from_pretrained(cls, model_dir, max_length: int = 256, max_history: int | None = None) -> DialogueModel:
        from components.model import Transformer
        from components.tokenizer import Tokenizer
        return cls(Transformer.from_pretrained(model_dir), Tokenizer.from_pretrained(model_dir), max_length,
                   max_history)

    def _prepare(self, history: list[str], decoding):
        from components.decoding import DecodingConfig
        config = decoding if isinstance(decoding, DecodingConfig) else DecodingConfig.from_dict(decoding)
        room = min(config.max_new_tokens, self.max_length // 2)
        config = dataclasses.replace(config, max_new_tokens=room, num_return_sequences=1)
        enc = encode_dialogue(self.tokenizer, history, self.max_length, self.max_history, reply_room=room,
                              for_reply=True)
        batch = pad_dialogues([enc], self.tokenizer.pad_id)
        return config, enc, batch

    def stream_chat(self, history: list[str], decoding=None):
        """Yields the reply's text as it grows (new characters per step), then the final Reply."""
        from components.decoding import stream_generate
        config, enc, batch = self._prepare(history, decoding or {})
        tokens: list[int] = []
        shown = ""
        result = None
        for event in stream_generate(self.model, batch["input_ids"], batch["segment_ids"], batch["attention_mask"],
                                     config, eos_token_id=self.tokenizer.sep_id, mask_mode="causal",
                                     target_segment_id=enc.next_segment):
            if event and isinstance(event[0], tuple):
                tokens += [tok for _, tok in event]
                text = self.tokenizer.decode(tokens)
                if len(text) > len(shown) and text.startswith(shown):
                    yield text[len(shown):]
                    shown = text
            elif event and isinstance(event[0], list):
                result = event[0][0]
        text = self.tokenizer.decode(result.token_ids)
        if text != shown and text.startswith(shown):
            yield text[len(shown):]
        yield Reply(text, result.finish_reason, len(enc.input_ids), len(result.token_ids))

    def chat(self, history: list[str], decoding=None) -> Reply:
        *_, reply = self.stream_chat(history, decoding)
        return reply
