"""`bert4ray serve [CONFIG.yaml] [--model DIR|URI] [--index DIR] [--chat-model DIR|URI]
                [--attribution-model DIR|URI] [--parser-model DIR|URI] [--host H] [--port P]
                [--ready-timeout S]`

Runs the Serve application (the `serving` package) in a child process: `python -m serving`. The CLI
lives in `pipelines`, which never imports `serving`, so the two meet only through this process
boundary and the model directory. Ctrl-C or SIGTERM stops Serve and the Ray it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

HELP = ("run the Ray Serve application (generation, retrieval, embeddings, chat, attribution, parsing) "
        "on 127.0.0.1:8000")


def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", help="Serve config YAML (default: flags only)")
    parser.add_argument("--model", help="SimBERT model directory or MLflow model URI (models:/name/1)")
    parser.add_argument("--index", help="index directory built by `bert4ray index` with the same model")
    parser.add_argument("--chat-model", help="dialogue model directory or MLflow model URI")
    parser.add_argument("--attribution-model", help="classifier (classify task) for /v1/attribute")
    parser.add_argument("--parser-model", help="masked LM (mlm task) for /v1/segment and /v1/parse")
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    parser.add_argument("--ready-timeout", type=float, metavar="SECONDS",
                        help="exit 1 with the reason when the app is not running after this long (default 60)")


def serving_command(args) -> list[str]:
    cmd = [sys.executable, "-m", "serving"]
    if args.config:
        cmd.append(args.config)
    for flag in ("model", "index", "chat_model", "attribution_model", "parser_model", "host", "port", "address",
                 "ready_timeout"):
        value = getattr(args, flag, None)
        if value is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
    return cmd


def run_foreground(cmd: list[str]) -> int:
    """Run the server child; forward SIGINT/SIGTERM to it and wait for its clean stop."""
    child = subprocess.Popen(cmd, env=os.environ.copy(),
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def forward(signum, _frame):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:
                forward(signal.SIGINT, None)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run(args) -> int:
    if not (args.config or args.model or args.chat_model or args.attribution_model or args.parser_model):
        raise ValueError("give a Serve config file, --model, --chat-model, --attribution-model or --parser-model")
    return run_foreground(serving_command(args))
