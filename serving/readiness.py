"""Wait for deployed applications to run, and say in one line why they do not.

Serve itself waits forever for a replica that the cluster cannot place, and retries a replica that
crashes while loading many times over. A user at a terminal needs an answer within a bound: which
deployment, what it asked for (as Serve holds it) and what the cluster has (as Ray counts it).
"""

from __future__ import annotations

import time

POLL_S = 0.5


class NotReady(RuntimeError):
    """An application did not reach RUNNING; the message is one line."""


def _resources(ray_actor_options: dict) -> dict[str, float]:
    opts = ray_actor_options or {}
    asked = {"CPU": float(opts.get("num_cpus", 1) or 0), "GPU": float(opts.get("num_gpus", 0) or 0)}
    asked.update({k: float(v) for k, v in (opts.get("resources") or {}).items()})
    if opts.get("memory"):
        asked["memory"] = float(opts["memory"])
    return {k: v for k, v in asked.items() if v}


def _fmt(resources: dict[str, float]) -> str:
    def one(key, value):
        if key in ("memory", "object_store_memory"):
            return f"{value / 2**30:.1f} GiB {key}"
        return f"{value:g} {key}"
    return ", ".join(one(k, v) for k, v in sorted(resources.items())) or "nothing"


def _deployments(app_name: str) -> dict[str, dict]:
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    return (details.get("applications", {}).get(app_name) or {}).get("deployments") or {}


def deployment_resources(app_name: str) -> dict[str, dict[str, float]]:
    """Each deployment's per-replica request, as Serve holds it (config overrides included)."""
    return {name: _resources(d.get("deployment_config", {}).get("ray_actor_options") or {})
            for name, d in _deployments(app_name).items()}


def _unplaced(app_name: str) -> set[str]:
    """Deployments with a replica that Ray has not started a process for (no pid yet)."""
    return {name for name, d in _deployments(app_name).items()
            if any(r.get("pid") is None for r in d.get("replicas") or [])}


def _last_line(message: str) -> str:
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    return lines[-1][:400] if lines else "no message from Serve"


def _explain(app_name: str, status, timeout_s: float) -> str:
    """One line for an application that failed or timed out."""
    import ray

    waiting = {name: d for name, d in status.deployments.items() if d.status.value != "HEALTHY"}
    if not waiting:
        return f"application '{app_name}' is {status.status.value}: {_last_line(status.message)}"
    asked, unplaced = deployment_resources(app_name), _unplaced(app_name)
    total, free = ray.cluster_resources(), ray.available_resources()
    for name in waiting:
        need = asked.get(name, {})
        short = {k: v for k, v in need.items() if v > total.get(k, 0)}
        if short or name in unplaced:
            has = {k: total.get(k, 0) for k in need}
            left = {k: round(free.get(k, 0), 2) for k in need}
            why = "can never be placed" if short else "could not be placed"
            return (f"deployment '{name}' {why}: each replica asks for {_fmt(need)}; the cluster has "
                    f"{_fmt(has)} in all, {_fmt(left) if any(left.values()) else 'none of it'} free "
                    f"(set scaling.num_cpus, or ray_actor_options in the Serve config)")
    name, info = next(iter(waiting.items()))
    state = "failed to start" if info.status.value in ("DEPLOY_FAILED", "UNHEALTHY") else \
        f"was not ready within {timeout_s:g} s"
    return f"deployment '{name}' {state}: {_last_line(info.message or status.message)}"


def wait_until_running(app_names: list[str], timeout_s: float, cancelled=lambda: False) -> bool:
    """Return True once every application is RUNNING (False if `cancelled()` first); raise NotReady
    with one line when one failed to deploy or is still not running after `timeout_s`."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while not cancelled():
        apps = serve.status().applications
        pending = [name for name in app_names if name not in apps or apps[name].status.value != "RUNNING"]
        if not pending:
            return True
        for name in pending:
            status = apps.get(name)
            if status is not None and status.status.value == "DEPLOY_FAILED":
                raise NotReady(_explain(name, status, timeout_s))
        if time.monotonic() > deadline:
            name = pending[0]
            if name not in apps:
                raise NotReady(f"application '{name}' was not created within {timeout_s:g} s")
            raise NotReady(_explain(name, apps[name], timeout_s))
        time.sleep(POLL_S)
    return False


def describe(app_name: str) -> str:
    """`ingress 0.25 CPU, generator 0.4 CPU x2, ...`: what each replica of each deployment got."""
    deployments, out = _deployments(app_name), []
    for name, need in deployment_resources(app_name).items():
        replicas = int(deployments[name].get("target_num_replicas") or 1)
        out.append(f"{name} {_fmt(need)}" + (f" x{replicas}" if replicas > 1 else ""))
    return ", ".join(out)
