"""The driver's helper actors (Ray Train's progress queue, Tune's stop board) stay on the driver's
node: a worker node lost mid-run must not take them, and the driver, down with it. Run in a
subprocess on a two-node cluster of its own whose head has no CPU, so that an actor left to the
scheduler is certain to land on the other node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, ray
from ray.cluster_utils import Cluster
from ray.util.queue import Queue
from pipelines.train import on_this_node

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
cluster.add_node(num_cpus=1)
ray.init(address=cluster.address, log_to_driver=False)

@ray.remote
class Where:
    def node(self):
        return ray.get_runtime_context().get_node_id()

queue = Queue(actor_options=on_this_node())
queue.put("record")
print(json.dumps({"driver": ray.get_runtime_context().get_node_id(),
                  "scheduler_placed": ray.get(Where.remote().node.remote()),
                  "pinned": ray.get(Where.options(**on_this_node()).remote().node.remote()),
                  "queued": queue.get(timeout=30)}))
ray.shutdown()
cluster.shutdown()
"""


def test_helper_actors_stay_on_the_drivers_node():
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    # The control: left to the scheduler, an actor goes to the node with a CPU, not the driver's.
    assert seen["scheduler_placed"] != seen["driver"]
    assert seen["pinned"] == seen["driver"]
    assert seen["queued"] == "record"
