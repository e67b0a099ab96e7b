"""A Ray head of the test's own on loopback: `ray start --head --block` with free ports and a short
temp dir, stopped by the process ids it started (never `ray stop`, which would end every Ray
instance on the machine).

Which processes are this head's: the descendants of its `ray start --block`, and every process
whose environment carries this head's marker variable (Ray workers rename themselves `ray::...`
and job drivers start new sessions, but all inherit the raylet's environment).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

MARKER = "BERT4RAY_TEST_RAY_HEAD"
PORT_FLAGS = ("port", "dashboard-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
              "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
              "metrics-export-port")


def free_ports(n: int) -> list[int]:
    """Ports free on every address: Ray's agents bind some of theirs on the machine's address, where
    a port free on loopback alone may be taken."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class RayHead:
    """`with RayHead() as head:` head.address is the dashboard URL (Jobs and state API)."""

    def __init__(self, num_cpus: int = 3, start_timeout_s: float = 120, resources: dict | None = None,
                 extra_env: dict | None = None):
        """`resources`: custom Ray resources of this node; `extra_env`: variables of this node's
        processes (its own HOME, TMPDIR, caches; the S3 endpoint and keys)."""
        self.num_cpus, self.start_timeout_s = num_cpus, start_timeout_s
        self.extra_env = dict(extra_env or {})
        self.temp_dir = tempfile.mkdtemp(prefix="b4r-", dir="/tmp")     # AF_UNIX paths stay short
        ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
        self.address = f"http://127.0.0.1:{ports['dashboard-port']}"
        self.gcs_address = f"127.0.0.1:{ports['port']}"
        self.command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                        "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
                        f"--num-cpus={num_cpus}", f"--object-store-memory={200 * 1024**2}",
                        f"--temp-dir={self.temp_dir}", "--min-worker-port=0", "--max-worker-port=0",
                        "--disable-usage-stats", *(f"--{k}={v}" for k, v in ports.items()),
                        *([f"--resources={json.dumps(resources)}"] if resources else [])]
        self.proc: subprocess.Popen | None = None
        self.pids: set[int] = set()
        self.killed: list[str] = []
        self.log = Path(self.temp_dir) / "ray-start.log"
        self._watching = threading.Event()

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "PYTHONPATH", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
        # The jobs' `python` is this virtualenv's; the code reaches the workers through the job's
        # runtime_env working_dir, not through PYTHONPATH.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        # Ray 2.60 turns token authentication on when ~/.ray/auth_token exists (any local Ray may
        # have written it). This head listens on loopback only and runs only this test's jobs.
        env["RAY_AUTH_MODE"] = "disabled"
        # Node IP 127.0.0.1: Ray otherwise replaces a loopback --node-ip-address with the machine's
        # address and listens there. This switch is the single-machine mode Ray uses on macOS.
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        env.update(self.extra_env)
        env[MARKER] = self.temp_dir
        return env

    def start(self) -> RayHead:
        from ray.job_submission import JobSubmissionClient
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                         cwd=self.temp_dir, start_new_session=True)
        self._watching.set()
        threading.Thread(target=self._watch, daemon=True).start()
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self.proc.poll() is not None:
                tail, code = self.log.read_text(errors="replace")[-3000:], self.proc.returncode
                self.stop()
                raise RuntimeError(f"ray start exited with {code}:\n{tail}")
            try:
                self._ready(JobSubmissionClient)
                return self
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    tail = self.log.read_text(errors="replace")[-3000:]
                    self.stop()
                    raise TimeoutError(f"Ray head not up in {self.start_timeout_s} s:\n{tail}") from None
                time.sleep(1.0)

    def _ready(self, client_class) -> None:
        client_class(self.address).list_jobs()

    def _watch(self) -> None:
        while self._watching.is_set():
            self._collect()
            time.sleep(2.0)

    def _collect(self) -> None:
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(psutil.NoSuchProcess):
            self.pids.update(p.pid for p in psutil.Process(proc.pid).children(recursive=True))
        for p in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
                if p.environ().get(MARKER) == self.temp_dir:
                    self.pids.add(p.pid)

    def owns(self, pid: int) -> bool:
        self._collect()
        return pid in self.pids

    def alive(self) -> list[int]:
        """This head's processes still running (none after stop())."""
        out = []
        for pid in sorted(self.pids | ({self.proc.pid} if self.proc else set())):
            with contextlib.suppress(psutil.NoSuchProcess):
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    out.append(pid)
        return out

    def stop(self, grace_s: float = 10) -> None:
        """SIGTERM `ray start --block` (its reaper then ends the head's process group), wait, then
        SIGKILL whatever of this head's processes is left; remove the temp dir."""
        if self.proc is None:
            return
        self._watching.clear()
        self._collect()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._collect()
        live = []
        for pid in self.pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                live.append(psutil.Process(pid))
        _, left = psutil.wait_procs(live, timeout=grace_s)
        self.killed = []
        for p in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                self.killed.append(f"{p.pid} {p.name()}")
                p.kill()
        psutil.wait_procs(left, timeout=10)
        self.proc = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> RayHead:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class RayNode(RayHead):
    """A second node joining `head` (`ray start --address=... --block`) with its own ports, temp
    dir, environment and custom resources; stopped, like the head, by the pids it started.
    `kill()` SIGKILLs them all at once, as a lost machine would go."""

    def __init__(self, head: RayHead, num_cpus: int = 1, resources: dict | None = None,
                 extra_env: dict | None = None, start_timeout_s: float = 120):
        super().__init__(num_cpus=num_cpus, start_timeout_s=start_timeout_s, resources=resources,
                         extra_env=extra_env)
        self.head = head
        flags = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
                 "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")
        ports = dict(zip(flags, free_ports(len(flags))))
        self.address = head.address
        self.command = [str(Path(sys.executable).parent / "ray"), "start", "--block",
                        f"--address={head.gcs_address}", "--node-ip-address=127.0.0.1",
                        f"--num-cpus={num_cpus}", f"--object-store-memory={200 * 1024**2}",
                        f"--temp-dir={self.temp_dir}", "--min-worker-port=0", "--max-worker-port=0",
                        "--disable-usage-stats", *(f"--{k}={v}" for k, v in ports.items()),
                        *([f"--resources={json.dumps(resources)}"] if resources else [])]
        self.node_id: str | None = None
        self._earlier: set[str] = set()

    def start(self) -> RayNode:
        # A node killed just before still counts as alive until the head misses its heartbeats:
        # only a node id that was not there before this start is this node.
        self._earlier = {n.node_id for n in self._alive_nodes()}
        return super().start()

    def _alive_nodes(self) -> list:
        from ray.util.state import list_nodes
        return list_nodes(address=self.head.address, filters=[("state", "=", "ALIVE")], detail=True, timeout=10)

    def _ready(self, client_class) -> None:
        mine = [n for n in self._alive_nodes() if not n.is_head_node and n.node_id not in self._earlier
                and n.resources_total.get(next(iter(self.resources)), 0)]
        if not mine:
            raise RuntimeError("the node has not joined yet")
        self.node_id = mine[0].node_id

    @property
    def resources(self) -> dict:
        return json.loads(self.command[-1].split("=", 1)[1])

    def kill(self) -> list[int]:
        """SIGKILL every process of this node (no clean shutdown); the pids it killed."""
        self._watching.clear()
        self._collect()
        pids = sorted(self.pids | ({self.proc.pid} if self.proc else set()))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc:
            self.proc.wait(timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return pids
