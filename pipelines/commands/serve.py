"""`bert4ray serve [CONFIG.yaml] [--model DIR|URI] [--index DIR|URI] [--chat-model DIR|URI]
                [--attribution-model DIR|URI] [--parser-model DIR|URI] [--host H] [--port P]
                [--ready-timeout S] [--<capability>-model DIR|URI ...]`

Runs the Serve application (the `serving` package) in a child process: `python -m serving`. The CLI
lives in `pipelines`, which never imports `serving`, so the two meet only through this process
boundary and the model directory. `python -m serving` owns the flags: the built-in capabilities'
flags are declared here too (for --help), and any other `--flag VALUE` (a capability added to
serving's registry) is passed on as it is, for it to check. Ctrl-C or SIGTERM stops Serve and the
Ray it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

HELP = ("run the Ray Serve application (generation, retrieval, embeddings, chat, attribution, parsing) "
        "on 127.0.0.1:8000")

CAPABILITY_FLAGS = (
    ("model", "SimBERT model directory or MLflow model URI (models:/name/1)"),
    ("index", "index built by `bert4ray index` with the same model: a directory or a bucket URI"),
    ("chat_model", "dialogue model directory or MLflow model URI"),
    ("attribution_model", "classifier (classify task) for /v1/attribute"),
    ("parser_model", "masked LM (mlm task) for /v1/segment and /v1/parse"),
)
SERVER_FLAGS = ("host", "port", "address", "ready_timeout")


class _ForwardingParser(argparse.ArgumentParser):
    """Keeps every `--flag VALUE` (or `--flag=VALUE`) it does not declare, for `python -m serving`."""

    def parse_known_args(self, args=None, namespace=None):
        own, forwarded = _split_undeclared(list(sys.argv[1:] if args is None else args), self._option_string_actions)
        namespace, extras = super().parse_known_args(own, namespace)
        namespace.serving_options = forwarded
        return namespace, extras


def _split_undeclared(argv: list[str], declared) -> tuple[list[str], list[str]]:
    """(the arguments for this parser, the undeclared options with their values). An option is
    declared when it is, or abbreviates, one of `declared`; an undeclared one takes the next
    argument as its value unless that is an option too (serving's flags all take a value)."""
    own, forwarded, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":                 # the rest is positional
            return own + argv[i:], forwarded
        name = arg.split("=", 1)[0]
        if not arg.startswith("--") or any(d.startswith(name) for d in declared):
            own.append(arg)
        else:
            forwarded.append(arg)
            if "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                i += 1
                forwarded.append(argv[i])
        i += 1
    return own, forwarded


def add_arguments(parser) -> None:
    parser.__class__ = _ForwardingParser     # made by the CLI's subparsers; only its parsing changes
    parser.epilog = ("Other --flag VALUE options (capabilities added to the server) are passed to "
                     "`python -m serving`; `python -m serving --help` lists them all.")
    parser.add_argument("config", nargs="?", help="Serve config YAML (default: flags only)")
    for name, help_text in CAPABILITY_FLAGS:
        parser.add_argument(f"--{name.replace('_', '-')}", help=help_text)
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    parser.add_argument("--ready-timeout", type=float, metavar="SECONDS",
                        help="exit 1 with the reason when the app is not running after this long (default 60)")


def serving_command(args) -> list[str]:
    cmd = [sys.executable, "-m", "serving"]
    if args.config:
        cmd.append(args.config)
    for flag in [name for name, _ in CAPABILITY_FLAGS] + list(SERVER_FLAGS):
        value = getattr(args, flag, None)
        if value is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
    return cmd + list(getattr(args, "serving_options", None) or [])


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
    if not (args.config or args.serving_options or any(getattr(args, name) for name, _ in CAPABILITY_FLAGS)):
        raise ValueError("give a Serve config file, --model, --chat-model, --attribution-model or --parser-model")
    return run_foreground(serving_command(args))
