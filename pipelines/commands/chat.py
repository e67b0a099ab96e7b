"""`bert4ray chat --model DIR`: interactive multi-turn chat with a dialogue model in the terminal.

    bert4ray chat --model bert4ray-runs/runs/<run id>/model
    bert4ray chat --model DIR --greedy
    printf '在吗\\n我的快递还没到\\n/reset\\n你好\\n' | bert4ray chat --model DIR --seed 0

Every line is one user turn. The reply is printed token by token as the cached decoder produces
it, then joins the history, so the next line is answered in context (the speaker segments keep
alternating). `/reset` clears the history; `/exit`, `/quit` or the end of input (Ctrl-D) quits.
Piped input works the same, without prompts: each reply is one line `bot> ...` on stdout, and
notices such as "(history cleared)" go to stderr.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from typing import TextIO

HELP = "interactive multi-turn chat with a dialogue model: streamed replies, /reset, /exit"
COMMANDS_HELP = "/reset clears the history, /exit quits (so does Ctrl-D)"


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model trained with the dialog task: a directory or an MLflow URI "
                             "(models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="reply length cap (default 32)")
    parser.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (default 0.9; 1 = off)")
    parser.add_argument("--consistent", action="store_true",
                        help="consistent top-k / nucleus: never filter out the end of the reply")
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None,
                        help="sampling seed: turn n of a conversation samples with seed + n, so the same "
                             "conversation gets the same replies")
    parser.add_argument("--max-history", type=int, default=0,
                        help="answer from at most this many recent turns (default 0: as many as fit)")
    parser.add_argument("--max-length", type=int, default=256,
                        help="tokens of history plus reply (capped at the model's positions)")


def decoding_settings(args) -> dict:
    if args.greedy:
        return {"strategy": "greedy", "max_new_tokens": args.max_new_tokens,
                "repetition_penalty": args.repetition_penalty}
    return {"strategy": "sample", "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
            "top_k": args.top_k, "top_p": args.top_p, "consistent": args.consistent,
            "repetition_penalty": args.repetition_penalty, "seed": args.seed}


def run(args) -> int:
    from components.config import read_bert4ray_json
    from components.decoding import DecodingConfig
    from pipelines.cli import UserError
    from pipelines.model_store import resolve_model
    from pipelines.tasks import task_is, tasks_where

    decoding = decoding_settings(args)
    DecodingConfig.from_dict(decoding)                         # bad settings fail before the model loads
    if args.max_history < 0:
        raise UserError(f"--max-history must be >= 0, got {args.max_history}")
    model_dir = resolve_model(args.model)                       # a directory or an MLflow URI
    task = read_bert4ray_json(model_dir).get("task")
    if task is not None and not task_is(task, "causal"):
        chat_tasks = " or ".join(f"'{name}'" for name in tasks_where("causal"))
        raise UserError(f"'{args.model}' was trained for the '{task}' task, not {chat_tasks}")

    from components.dialog import DialogueModel
    dialogue = DialogueModel.from_pretrained(model_dir, max_length=args.max_length,
                                             max_history=args.max_history or None)
    interactive = sys.stdin.isatty()
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401 - line editing and history for input()
        print(f"chatting with {args.model} - {COMMANDS_HELP}", file=sys.stderr)
    lines = _terminal_lines() if interactive else sys.stdin
    chat_loop(dialogue, lines, sys.stdout, decoding, notices=sys.stderr)
    if interactive:
        print(file=sys.stderr)
    return 0


def _terminal_lines() -> Iterator[str]:
    while True:
        try:
            yield input("you> ")
        except EOFError:
            return


def chat_loop(dialogue, lines: Iterable[str], out: TextIO, decoding: dict, notices: TextIO | None = None
              ) -> list[str]:
    """Answer every line of `lines` in turn, streaming each reply to `out`; returns the history
    that is current at the end (after the last /reset)."""
    notices = notices or sys.stderr
    history: list[str] = []
    for line in lines:
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = []
            print("(history cleared)", file=notices, flush=True)
            continue
        if text in ("/help", "/?"):
            print(COMMANDS_HELP, file=notices, flush=True)
            continue
        history.append(text)
        settings = decoding
        if decoding.get("seed") is not None:                   # not the same random draws at every turn
            settings = {**decoding, "seed": decoding["seed"] + len(history) // 2}
        out.write("bot> ")
        out.flush()
        reply = None
        for piece in dialogue.stream_chat(history, settings):
            if isinstance(piece, str):
                out.write(piece)
                out.flush()
            else:
                reply = piece
        out.write("\n")
        out.flush()
        history.append(reply.text)                             # an empty reply still keeps the speakers alternating
    return history
