"""Multi-turn dialogue as one causal LM sequence (DialoGPT / CDial-GPT style).

    [CLS] u1 [SEP] u2 [SEP] ... un [SEP]

Segment ids alternate per speaker, counted back from the end: the last turn (the response, or the
reply being generated) has segment 1, the turn before it 0, and so on. Counting from the end keeps
every speaker's segment stable when old turns are cut to fit `max_length` / `max_history`, and makes
the reply's segment at inference the one it had in training. [CLS] takes the first kept turn's segment.

Word-segmented corpora (LCCC, the Taobao dialogues) separate words or characters by spaces:
`normalize_utterance` removes them, keeping one space only between two Latin words or numbers.
`dialogue_nll` is the LM loss of the tokens a mask selects, also under a self-terminating head
(each turn is one generation: the head's step count restarts at every turn).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_SPACES = re.compile(r"\s+")
_ASCII_WORD = re.compile(r"[A-Za-z0-9]")


def normalize_utterance(text: str) -> str:
    """Undo word segmentation: "我 要 买 iphone 6 啊" -> "我要买iphone 6啊". Whitespace runs are
    dropped except between two ASCII letters/digits, where one space stays."""
    pieces = _SPACES.split(text.strip())
    out = pieces[0] if pieces else ""
    for piece in pieces[1:]:
        if out and piece and _ASCII_WORD.match(out[-1]) and _ASCII_WORD.match(piece[0]):
            out += " "
        out += piece
    return out


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


def dialogue_nll(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor, turns: torch.Tensor,
                 config, eos_id: int, per_row: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed negative log-likelihood of the next tokens that `mask` selects, and their count:
    scalars, or (B,) each with `per_row`.

    logits (B, T, V); input_ids (B, T); mask and turns (B, T-1), aligned with the targets
    input_ids[:, 1:] (turns: the target's turn index, -1 where none). With `config.termination`
    `st` / `nmst` the self-terminating distribution is used, its step restarting at every turn
    (each turn is one generation)."""
    logits, targets, mask = logits[:, :-1], input_ids[:, 1:], mask.bool()   # position t predicts t+1
    counts = mask.sum(1)
    if config.termination == "none":
        nll = F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")   # (B, T-1)
        sums = (nll * mask).sum(1)
        return (sums, counts) if per_row else (sums.sum(), counts.sum())
    from components.decoding import termination_nll

    def turn_sums(rows: slice) -> torch.Tensor:
        # termination_nll counts the steps along each row over its masked positions, so selecting one
        # turn index at a time restarts the count at every turn; it returns a mean: times the count.
        total = logits.new_zeros((), dtype=torch.float32)
        for k in turns[rows][mask[rows]].unique().tolist():
            m = mask[rows] & (turns[rows] == k)
            total = total + m.sum() * termination_nll(logits[rows], targets[rows], m, eos_id,
                                                      config.termination_epsilon, config.termination)
        return total

    if per_row:
        return torch.stack([turn_sums(slice(r, r + 1)) for r in range(len(targets))]), counts
    return turn_sums(slice(None)), counts.sum()


def pad_dialogues(batch: list[EncodedDialogue], pad_id: int, device=None) -> dict[str, torch.Tensor]:
    """Right-padded tensors (B, T): input_ids, segment_ids, attention_mask; and target_turns
    (B, T-1): the turn index of each next-token target input_ids[:, 1:], -1 on padding. Built as
    lists, then one tensor each on `device` (None: the CPU, never torch's default device)."""
    T = max(len(e.input_ids) for e in batch)
    rows = {"input_ids": [e.input_ids + [pad_id] * (T - len(e.input_ids)) for e in batch],
            "segment_ids": [e.segment_ids + [0] * (T - len(e.input_ids)) for e in batch],
            "attention_mask": [[1] * len(e.input_ids) + [0] * (T - len(e.input_ids)) for e in batch],
            "target_turns": [e.turn_ids[1:] + [-1] * (T - len(e.input_ids)) for e in batch]}
    widths = {"target_turns": max(T - 1, 0)}
    return {k: torch.tensor(v, dtype=torch.long, device=device or "cpu").reshape(len(batch), widths.get(k, T))
            for k, v in rows.items()}


def loss_mask(target_turns: torch.Tensor, mode: str) -> torch.Tensor:
    """`lm_loss_mask` for a padded batch: target_turns (B, T-1) -> bool (B, T-1)."""
    if mode not in ("all_turns", "last_turn"):
        raise ValueError(f"unknown loss mode {mode!r}; valid: all_turns, last_turn")
    real = target_turns >= 0
    if mode == "all_turns":
        return real
    return real & (target_turns == target_turns.max(dim=1, keepdim=True).values)


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
    def from_pretrained(cls, model_dir, max_length: int = 256, max_history: int | None = None,
                        device=None, dtype=None) -> DialogueModel:
        """`device` / `dtype`: where and in which type the weights live (Transformer.from_pretrained)."""
        from components.model import Transformer
        from components.tokenizer import Tokenizer
        return cls(Transformer.from_pretrained(model_dir, device=device, dtype=dtype),
                   Tokenizer.from_pretrained(model_dir), max_length, max_history)

    def _config(self, decoding):
        """The decoding settings for one reply each: max_new_tokens capped at half the context."""
        from components.decoding import DecodingConfig
        config = decoding if isinstance(decoding, DecodingConfig) else DecodingConfig.from_dict(decoding)
        room = min(config.max_new_tokens, self.max_length // 2)
        return dataclasses.replace(config, max_new_tokens=room, num_return_sequences=1)

    def _encode_histories(self, histories: list[list[str]], room: int):
        encs = [encode_dialogue(self.tokenizer, h, self.max_length, self.max_history, reply_room=room, for_reply=True)
                for h in histories]
        return encs, pad_dialogues(encs, self.tokenizer.pad_id, self.model.device)

    def _prepare(self, history: list[str], decoding):
        config = self._config(decoding)
        encs, batch = self._encode_histories([history], config.max_new_tokens)
        return config, encs[0], batch

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

    def reply_batch(self, histories: list[list[str]], decoding=None, batch_size: int = 32,
                    seeds: list[int | None] | None = None) -> list[Reply]:
        """One reply per history, `batch_size` histories decoded together by the batched cached
        decoder (greedy, sampling or beam search). `seeds`: one sampling seed per history (in place
        of the decoding seed), each history sampled as if alone."""
        from components.decoding import generate
        config = self._config(decoding or {})
        replies: list[Reply] = []
        for start in range(0, len(histories), batch_size):
            encs, batch = self._encode_histories(histories[start:start + batch_size], config.max_new_tokens)
            gens = generate(self.model, batch["input_ids"], batch["segment_ids"], batch["attention_mask"], config,
                            eos_token_id=self.tokenizer.sep_id, mask_mode="causal",
                            target_segment_id=torch.tensor([e.next_segment for e in encs], device=self.model.device),
                            seeds=None if seeds is None else seeds[start:start + batch_size])
            for enc, (gen, *_) in zip(encs, gens):
                replies.append(Reply(self.tokenizer.decode(gen.token_ids), gen.finish_reason, len(enc.input_ids),
                                     len(gen.token_ids)))
        return replies

    @torch.no_grad()
    def score(self, pairs: list[tuple[list[str], str]], batch_size: int = 64) -> list[tuple[float, int]]:
        """(log-likelihood, tokens) of each response given its history: the sum of the model's
        log-probabilities of the response's tokens and its closing [SEP], as the decoder would
        produce them (self-terminating head included). The history is cut like a chat's."""
        encs = [encode_dialogue(self.tokenizer, [*history, response], self.max_length, self.max_history)
                for history, response in pairs]
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].input_ids))      # little padding
        out: list[tuple[float, int]] = [(0.0, 0)] * len(encs)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            chunk = [encs[i] for i in idx]
            batch = pad_dialogues(chunk, self.tokenizer.pad_id, self.model.device)
            mask = loss_mask(batch["target_turns"], "last_turn")
            logits = self.model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"],
                                mask_mode="causal").logits
            nll, counts = dialogue_nll(logits, batch["input_ids"], mask, batch["target_turns"], self.model.config,
                                       self.tokenizer.sep_id, per_row=True)
            # to the host on purpose: the caller gets Python numbers (one transfer per batch)
            for j, (row_nll, count) in enumerate(zip(nll.tolist(), counts.tolist())):
                out[idx[j]] = (-row_nll, int(count))
        return out
