"""Multi-turn dialogue as one causal LM sequence (DialoGPT / CDial-GPT style).

    [CLS] u1 [SEP] u2 [SEP] ... un [SEP]

Segment ids alternate per speaker, counted back from the end: the last turn (the response, or the
reply being generated) has segment 1, the turn before it 0, and so on. Counting from the end keeps
every speaker's segment stable when old turns are cut to fit `max_length` / `max_history`, and makes
the reply's segment at inference the one it had in training. [CLS] takes the first kept turn's segment.
"""

from __future__ import annotations

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
