"""The automatic CPU split of the Serve app (pure arithmetic, no Ray) and its precedence."""

import pytest

from serving.app import AppArgs, cpus_per_replica, model_deployments
from serving.resources import INGRESS_CPUS, split_cpus


@pytest.mark.parametrize("replicas, total, largest, share", [
    ({"retriever": 1, "generator": 1}, 2, 2, 0.87),                       # (2 - 0.25) / 2, rounded down
    (dict.fromkeys(["retriever", "generator", "chat", "attributor", "parser"], 1), 2, 2, 0.35),
    ({"retriever": 2, "generator": 2}, 2, 2, 0.43),                       # autoscaling: by max_replicas
    ({"retriever": 1, "generator": 1}, 64, 8, 7.75),                      # a replica fits on one node
    ({"retriever": 1, "generator": 1}, 0.25, 0.25, 1.0),                  # nothing left: the default
])
def test_split(replicas, total, largest, share):
    got = split_cpus(replicas, total, largest)
    assert got == dict.fromkeys(replicas, share)
    if share != 1.0:
        used = sum(got[name] * n for name, n in replicas.items())
        assert used <= total - INGRESS_CPUS and share >= 0.1


def test_split_of_nothing():
    assert split_cpus({}, 2, 2) == {}


def test_an_explicit_share_wins_and_needs_no_cluster():
    args = AppArgs(model="m", parser_model="p", scaling={"num_cpus": 0.5})
    assert model_deployments(args) == ["retriever", "generator", "parser"]
    assert cpus_per_replica(args) == {"retriever": 0.5, "generator": 0.5, "parser": 0.5}


def test_the_split_reads_the_running_ray(ray_session):
    """Inside a Ray (the test session's, 3 CPUs), the builder splits what Ray reports."""
    cpus = ray_session.cluster_resources()["CPU"]
    args = AppArgs(model="m", chat_model="c", scaling={"num_replicas": "auto",
                                                       "autoscaling": {"min_replicas": 1, "max_replicas": 2}})
    assert cpus_per_replica(args) == split_cpus({"retriever": 2, "generator": 2, "chat": 2}, cpus, cpus)
