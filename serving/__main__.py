"""Run the Serve application until Ctrl-C or SIGTERM, then stop Serve and the Ray it started.

    python -m serving [CONFIG.yaml] [--model DIR|URI] [--index DIR|URI] [--chat-model DIR|URI]
                      [--attribution-model DIR|URI] [--parser-model DIR|URI]
                      [--host 127.0.0.1] [--port 8000] [--address RAY_ADDRESS] [--ready-timeout 60]

The model flags are the registered capabilities' arguments (serving/registry.py): a capability
added there has its flag here, and `bert4ray serve`, which runs this module, forwards it.

CONFIG is a Serve config file (serving/config.yaml) and is deployed exactly as `serve run CONFIG`
deploys it (its `deployments:`, `runtime_env` and `logging_config` included); the flags override
its first application's args and its http_options.
Without CONFIG, the flags make a config of one application, `serving.app:build_app`.

Exit codes: 0 after Ctrl-C / SIGTERM; 2 for input that is wrong before anything starts (a missing
model directory, an index built by another model, a bad config); 1 when a deployment cannot be
placed or fails to start within --ready-timeout seconds (one line says which and why).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from serving.checks import InputError, prepare_config
from serving.registry import PLUGINS_ENV, app_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m serving", description=__doc__.splitlines()[0],
                                epilog=f"More capabilities: name their modules in {PLUGINS_ENV} (see serving/registry.py).")
    p.add_argument("config", nargs="?", help="Serve config YAML (deployed as `serve run` deploys it)")
    for arg in app_args():
        p.add_argument(arg.flag, help=arg.help)
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster to join")
    p.add_argument("--ready-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="give up when the application is not running after this long (default 60)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _start_ray(address: str | None) -> bool:
    """Join `address`, or start a local Ray that declares exactly this machine's CPUs. Returns
    whether this process started it."""
    import ray

    from serving.resources import local_cpus

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
        return False
    # "local": a Ray of our own even when another runs on this machine (e.g. from `ray start`)
    ray.init(address="local", num_cpus=local_cpus(), include_dashboard=False, log_to_driver=False)
    return True


def _serve_running() -> bool:
    from ray.serve.context import _get_global_client
    return _get_global_client(raise_if_no_controller_running=False) is not None


def _deploy(config) -> list[str]:
    """What `serve run CONFIG` does: start Serve with the config's HTTP options, submit the config."""
    from ray.serve._private.api import serve_start
    from ray.serve.config import gRPCOptions

    client = serve_start(http_options=config.http_options.model_dump(), proxy_location=config.proxy_location,
                         grpc_options=gRPCOptions(**config.grpc_options.model_dump()))
    client.deploy_apps(config, _blocking=False)
    return [app.name for app in config.applications]


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        config = prepare_config(args.config, {a.name: getattr(args, a.name) for a in app_args()},
                                host=args.host, port=args.port)
    except InputError as exc:
        print(f"bert4ray serve: error: {exc}", file=sys.stderr)
        return 2

    import ray

    from serving.readiness import NotReady, describe, wait_until_running

    started_ray = _start_ray(args.address)
    started_serve, names = not _serve_running(), []
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):      # after ray.init, which installs its own
        signal.signal(sig, lambda *_: stop.set())
    try:
        names = _deploy(config)
        if not wait_until_running(names, args.ready_timeout, cancelled=stop.is_set):
            return 0
        host, port = config.http_options.host, config.http_options.port
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        got = "; ".join(f"{name}: {describe(name)}" for name in names)
        cpus = ray.cluster_resources().get("CPU", 0)
        print(f"bert4ray is serving at http://{shown}:{port}/  (API docs: /docs)  — Ctrl-C to stop\n"
              f"  resources per replica, on a Ray of {cpus:g} CPUs ({'started here' if started_ray else 'joined'}) "
              f"— {got}", flush=True)
        stop.wait()
        print("stopping ...", flush=True)
        return 0
    except NotReady as exc:
        print(f"bert4ray serve: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - anything else Serve raises (port in use, ...) ends here
        print(f"bert4ray serve: error: {str(exc).strip().splitlines()[-1][:500]}", file=sys.stderr)
        return 1
    finally:
        try:
            _clean_up(started_serve, names)
        finally:
            if started_ray:
                ray.shutdown()


def _clean_up(started_serve: bool, names: list[str]) -> None:
    """Stop what this process started: Serve itself, or on a cluster where Serve already ran, only
    the applications it deployed."""
    from ray import serve

    if started_serve:
        serve.shutdown()
        return
    for name in names:
        serve.delete(name)


if __name__ == "__main__":
    sys.exit(main())
