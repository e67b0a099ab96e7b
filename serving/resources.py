"""How many logical CPUs each deployment asks Ray for, when the app does not say.

A replica that asks for more than the cluster can give is never scheduled, and Serve then waits
for it forever. So unless `scaling.num_cpus` (or a Serve config's `deployments: ...
ray_actor_options`, which Serve applies on top) says otherwise, the builder splits what the
cluster has: the ingress takes INGRESS_CPUS, and the model replicas share the rest equally.
"""

from __future__ import annotations

import math
import os

INGRESS_CPUS = 0.25
"""The ingress parses requests and awaits the model deployments: a quarter of a core."""
MIN_SHARE = 0.1
"""Below this a split stops meaning anything; such a cluster gets the default of 1 CPU per replica
(an autoscaling cluster adds nodes for it; a fixed one gets a clear error from `bert4ray serve`)."""


def local_cpus() -> int:
    """The CPUs a local Ray started without `num_cpus` declares (container limits included), so
    a Ray that `bert4ray serve` starts and one that `serve run` starts agree."""
    try:
        from ray._private.utils import get_num_cpus
        return max(1, int(get_num_cpus()))
    except Exception:  # noqa: BLE001 - private helper; the plain count is the same on most machines
        return os.cpu_count() or 1


def _cpus_of(nodes: list[dict]) -> tuple[float, float]:
    cpus = [float(n.get("Resources", {}).get("CPU", 0)) for n in nodes if n.get("Alive")]
    return sum(cpus), max(cpus, default=0.0)


def _address_serve_run_would_use() -> str | None:
    """What `ray.init()` without an address joins: RAY_ADDRESS, else a cluster that `ray start`
    left on this machine, else None (it starts a local Ray)."""
    try:
        from ray._private.services import canonicalize_bootstrap_address
        return canonicalize_bootstrap_address(None)
    except Exception:  # noqa: BLE001 - private helper; RAY_ADDRESS is the documented way in any case
        return os.environ.get("RAY_ADDRESS") or None


def cluster_cpus() -> tuple[float, float]:
    """(CPUs of the whole cluster, CPUs of its largest node), read from Ray.

    `serve run module:app` builds the app before it connects to Ray: then join the cluster it will
    use for a moment or, with none, count the CPUs of the local Ray it is about to start."""
    import ray

    if ray.is_initialized():
        return _cpus_of(ray.nodes())
    address = _address_serve_run_would_use()
    if not address:
        n = float(local_cpus())
        return n, n
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        return _cpus_of(ray.nodes())
    finally:
        ray.shutdown()


def split_cpus(replicas: dict[str, int], total: float, largest: float) -> dict[str, float]:
    """CPUs per replica of each model deployment: (total − ingress) shared by all their replicas
    (rounded down to hundredths, so the shares never add up to more than there is), and never more
    than one node has."""
    count = sum(replicas.values())
    if count == 0:
        return {}
    share = math.floor((total - INGRESS_CPUS) / count * 100) / 100
    share = min(share, math.floor((largest - INGRESS_CPUS) * 100) / 100)
    if share < MIN_SHARE:
        share = 1.0
    return dict.fromkeys(replicas, share)
