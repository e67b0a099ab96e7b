"""Run the Serve application until Ctrl-C or SIGTERM, then stop Serve and the Ray it started.

    python -m serving [CONFIG.yaml] [--model DIR|URI] [--index DIR] [--chat-model DIR|URI]
                      [--attribution-model DIR|URI] [--parser-model DIR|URI]
                      [--host 127.0.0.1] [--port 8000] [--address RAY_ADDRESS]

`bert4ray serve` runs this module. CONFIG is a Serve config file (serving/config.yaml); flags
override its first application's args and its http_options.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

import yaml


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serving", description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", help="Serve config YAML (applications[0].args, http_options)")
    p.add_argument("--model", help="SimBERT model directory or MLflow model URI")
    p.add_argument("--index", help="index directory built by `bert4ray index`")
    p.add_argument("--chat-model", help="dialogue model directory or MLflow model URI")
    p.add_argument("--attribution-model", help="classifier (classify task) for /v1/attribute")
    p.add_argument("--parser-model", help="masked LM (mlm task) for /v1/segment and /v1/parse")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster to join")
    return p.parse_args(argv)


def load_settings(args: argparse.Namespace) -> tuple[dict, str, int]:
    app_args: dict = {}
    http = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"Serve config '{path}' does not exist")
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        apps = config.get("applications") or []
        if apps:
            app_args = dict(apps[0].get("args") or {})
        http = config.get("http_options") or {}
    for key in ("model", "index", "chat_model", "attribution_model", "parser_model"):
        value = getattr(args, key)
        if value:
            app_args[key] = value
    host = args.host or http.get("host", "127.0.0.1")
    port = args.port or int(http.get("port", 8000))
    return app_args, host, port


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        app_args, host, port = load_settings(args)
        from serving.app import AppArgs, build_app
        app = build_app(AppArgs(**app_args))
    except Exception as exc:  # noqa: BLE001 - configuration errors are reported as one line
        print(f"bert4ray serve: error: {exc}", file=sys.stderr)
        return 2

    import ray
    from ray import serve

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started_ray = not ray.is_initialized() and not args.address
    ray.init(address=args.address, include_dashboard=False, log_to_driver=False) if args.address else \
        ray.init(include_dashboard=False, log_to_driver=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name="bert4ray", route_prefix="/", blocking=False)
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        print(f"bert4ray is serving at http://{shown}:{port}/  (API docs: /docs)  — Ctrl-C to stop", flush=True)
        stop.wait()
        print("stopping ...", flush=True)
        return 0
    except Exception as exc:  # noqa: BLE001 - deployment failures (bad model dir, port in use) end here
        print(f"bert4ray serve: error: {str(exc).strip().splitlines()[-1][:500]}", file=sys.stderr)
        return 1
    finally:
        try:
            serve.shutdown()
        finally:
            if started_ray:
                ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
