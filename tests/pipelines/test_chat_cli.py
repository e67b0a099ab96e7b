"""`bert4ray chat` on a tiny saved dialogue model: piped input through a real subprocess (history kept,
/reset, /exit, end of input), a real pseudo-terminal (prompts, Ctrl-D), streaming, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from components.dialog import DialogueModel
from pipelines.commands.chat import chat_loop

REPO = Path(__file__).resolve().parents[2]
GREEDY = {"strategy": "greedy", "max_new_tokens": 6, "repetition_penalty": 1.0}


def chat_cli(*args, stdin: str, timeout=120):
    return subprocess.run([sys.executable, "-m", "pipelines", "chat", *map(str, args)], cwd=REPO, input=stdin,
                          capture_output=True, text=True, encoding="utf-8", timeout=timeout)


@pytest.fixture
def dialog_dir(tiny_model_dir):
    # min_new_tokens cannot be set from the command line: a larger init keeps a random model's
    # replies from all being empty, so that the history visibly matters.
    return tiny_model_dir(initializer_range=0.2)


def test_piped_chat_keeps_the_history_resets_and_exits(dialog_dir):
    lines = ["你好", "我的快递还没到", "", "/reset", "我的快递还没到", "/exit", "这一行不会被回答"]
    proc = chat_cli("--model", dialog_dir, "--greedy", "--max-new-tokens", 6, stdin="\n".join(lines) + "\n")
    assert proc.returncode == 0, proc.stderr
    replies = proc.stdout.splitlines()
    assert all(r.startswith("bot> ") for r in replies) and len(replies) == 3, proc.stdout
    assert "(history cleared)" in proc.stderr and "you>" not in proc.stdout     # no prompts when piped

    # The same conversation in-process: the first two replies share one history, the third is
    # answered after /reset as if the conversation began with it.
    dialogue = DialogueModel.from_pretrained(dialog_dir)
    first = dialogue.chat(["你好"], GREEDY).text
    second = dialogue.chat(["你好", first, "我的快递还没到"], GREEDY).text
    fresh = dialogue.chat(["我的快递还没到"], GREEDY).text
    assert replies == [f"bot> {first}", f"bot> {second}", f"bot> {fresh}"]
    assert second != fresh, "the history did not reach the model"


def test_end_of_input_quits_and_sampling_is_seeded(dialog_dir):
    proc = chat_cli("--model", dialog_dir, "--seed", 3, "--top-k", 20, "--max-new-tokens", 6,
                    stdin="在吗\n好的")                                        # no final newline
    assert proc.returncode == 0, proc.stderr
    dialogue = DialogueModel.from_pretrained(dialog_dir)
    sampling = {"strategy": "sample", "top_k": 20, "top_p": 0.9, "max_new_tokens": 6}
    first = dialogue.chat(["在吗"], {**sampling, "seed": 3}).text                  # turn n samples with seed + n
    second = dialogue.chat(["在吗", first, "好的"], {**sampling, "seed": 4}).text
    assert proc.stdout.splitlines() == [f"bot> {first}", f"bot> {second}"]


class Terminal:
    """A stdout that records every write, to see the reply arrive piece by piece."""

    def __init__(self):
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_replies_stream_token_by_token(dialog_dir):
    import io
    dialogue = DialogueModel.from_pretrained(dialog_dir)
    settings = {"strategy": "greedy", "max_new_tokens": 8, "min_new_tokens": 8}
    term, notices = Terminal(), io.StringIO()
    history = chat_loop(dialogue, ["你好", "/reset", "在吗"], term, settings, notices=notices)
    reply = dialogue.chat(["在吗"], settings)
    assert history == ["在吗", reply.text] and notices.getvalue() == "(history cleared)\n"
    # Each reply: the "bot> " prefix, then several pieces, then the newline.
    text = "".join(term.writes)
    assert text.count("bot> ") == 2 and text.endswith(reply.text + "\n")
    second = term.writes[len(term.writes) - term.writes[::-1].index("bot> "):-1]
    assert "".join(second) == reply.text and len(second) >= 4, second


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/model"], "model directory '/nonexistent/model' does not exist"),
    (["--top-p", "1.5"], "top_p must be in (0, 1]"),
    (["--max-new-tokens", "0"], "max_new_tokens must be an integer >= 1"),
    (["--max-history", "-1"], "--max-history must be >= 0, got -1"),
])
def test_errors_are_one_line(dialog_dir, capsys, args, message):
    from pipelines.cli import main
    assert main(["chat", "--model", str(dialog_dir), *args]) == 2        # the last --model wins
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_a_model_of_another_task_is_refused(tiny_model_dir, vocab_file, capsys):
    from components.model import Transformer
    from pipelines.cli import main
    out = tiny_model_dir("simbert")
    Transformer.from_pretrained(out).save_pretrained(out, metadata={"vocab_file": str(vocab_file), "task": "simbert"})
    assert main(["chat", "--model", str(out)]) == 2
    assert "trained for the 'simbert' task, not 'dialog'" in capsys.readouterr().err


def test_in_a_terminal_it_prompts_and_quits_at_ctrl_d(dialog_dir):
    import os
    import pty
    import select
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "pipelines", "chat", "--model", str(dialog_dir), "--greedy"],
                            cwd=REPO, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""

    def read_until(marker: bytes, times: int, seconds: float) -> None:
        """Read the terminal until `marker` has appeared `times` times (or the child is gone)."""
        nonlocal out
        deadline = time.monotonic() + seconds
        while out.count(marker) < times and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    out += os.read(master, 4096)
                except OSError:                                   # the child closed the terminal
                    return

    try:
        read_until(b"you> ", 1, 90)
        os.write(master, "你好\n".encode())
        read_until(b"you> ", 2, 60)                                # the reply, then the next prompt
        os.write(master, b"\x04")                                  # Ctrl-D on an empty line: end of input
        read_until(b"never printed", 1, 60)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = out.decode("utf-8", errors="replace")
    assert "/reset clears the history" in text and text.count("you> ") == 2 and "bot> " in text, text
