"""A serve command run as a user runs it: a subprocess in its own session (so that everything it
starts, Ray included, is stopped with it), its output collected, bounded waits on its state."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"

SERVING_LINE = re.compile(r"bert4ray is serving at (http://\S+?)/? ")
SHARES = re.compile(r"on a Ray of ([\d.]+) CPUs \(started here\) — (.*)")


class ServeProcess:
    def __init__(self, argv: list[str], cwd: Path, log: Path, env: dict | None = None):
        self.log = log
        self._fh = open(log, "w", encoding="utf-8")  # noqa: SIM115 - open for the process' lifetime
        # SIGINT restored in the child: background processes start with it ignored.
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=self._fh, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, start_new_session=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.started = time.monotonic()

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, pattern: re.Pattern, timeout_s: float) -> re.Match:
        """The first match of `pattern` in the output; fails if the process ends or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if match := pattern.search(self.output()):
                return match
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode} before {pattern.pattern!r}:\n{self.output()[-3000:]}")
            time.sleep(0.25)
        raise AssertionError(f"no {pattern.pattern!r} within {timeout_s} s:\n{self.output()[-3000:]}")

    def wait_exit(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout_s} s:\n{self.output()[-3000:]}") from None

    def stop(self, grace_s: float = 30, sig: int = signal.SIGTERM) -> None:
        """`sig` (bert4ray serve stops cleanly on SIGTERM, `serve run` on SIGINT), then SIGKILL to
        the session if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):      # anything of its session still alive
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._fh.close()


def get_ready(base: str, timeout_s: float) -> httpx.Response:
    """Poll /healthz with short client timeouts until it answers 200."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{base}/healthz", timeout=3)
            if r.status_code == 200:
                return r
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{base}/healthz did not answer 200 within {timeout_s} s")


def parse_shares(output: str) -> tuple[float, dict[str, float]]:
    """(CPUs of the Ray the command started, {deployment: CPUs per replica}) from its start-up line."""
    match = SHARES.search(output)
    assert match, output[-2000:]
    cpus = float(match.group(1))
    shares = {m.group(1): float(m.group(2)) for m in re.finditer(r"(\w+) ([\d.]+) CPU", match.group(2))}
    return cpus, shares
