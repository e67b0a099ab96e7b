"""`bert4ray submit --storage s3://...` to a two-node Ray cluster on loopback whose nodes share
nothing but an S3 server (moto, started here): each node has its own HOME, TMPDIR, caches and Ray
temp dir, and one custom `train_slot`, so the two Train workers land one per node. A first job
SUCCEEDS with a worker on each node; in a second, the test kills every process of the second node
after the first complete checkpoint, starts the node again, and the run resumes from the bucket's
checkpoint to its full step count (the workers read the data from the bucket again: blocks
materialized on the lost node are gone). Slow: `pytest -m slow tests/storage/test_two_nodes_s3.py -s`
prints the figures."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.cluster.raycluster import RayHead, RayNode
from tests.storage.s3server import S3Server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
REPO = Path(__file__).resolve().parents[2]
BUCKET = "bert4ray-nodes"


def node_env(root: Path, s3: S3Server) -> dict:
    """A node's private directories (nothing another node or the test's process writes) and the
    standard S3 variables."""
    dirs = {k: root / k.lower() for k in ("HOME", "TMPDIR", "XDG_CACHE_HOME", "HF_HOME", "PIP_CACHE_DIR",
                                           "BERT4RAY_MODEL_CACHE")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    # Several Ray nodes on one machine: Ray's multi-node-on-loopback switch, on both nodes.
    return {**{k: str(v) for k, v in dirs.items()}, **s3.env(), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from pipelines.corpora import peoples_daily_rows
    root = tmp_path_factory.mktemp("nodes")
    with S3Server(log_dir=root) as s3:
        s3.create_bucket(BUCKET)
        s3.put(BUCKET, "data/pd.jsonl", "".join(json.dumps({"text": r["text"]}, ensure_ascii=False) + "\n"
                                                for r in peoples_daily_rows()[:600]).encode())
        head = RayHead(num_cpus=2, resources={"node_a": 1, "train_slot": 1}, extra_env=node_env(root / "a", s3))
        head.start()
        node = RayNode(head, num_cpus=1, resources={"node_b": 1, "train_slot": 1},
                       extra_env=node_env(root / "b", s3))
        state = {"s3": s3, "head": head, "node": node, "root": root, "runtime_env": root / "runtime_env.yaml"}
        try:
            node.start()
            env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text(encoding="utf-8"))
            env.pop("pip")
            (root / "runtime_env.yaml").write_text(yaml.safe_dump(env), encoding="utf-8")
            yield state
        finally:
            state["node"].stop()                # the node in place now: the kill test starts a new one
            head.stop()


def write_recipe(cluster, name: str, total: int, every: int) -> Path:
    recipe = {
        "name": name, "seed": 0,
        "model": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
                  "max_position_embeddings": 64, "vocab_max_size": 1500},
        "data": {"train": [f"s3://{BUCKET}/data/pd.jsonl"], "max_length": 48, "validation_fraction": 0.1},
        "optim": {"lr": 3e-3, "batch_size": 8},
        "schedule": {"max_steps": total, "warmup_steps": 2, "log_every": 1},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1, "resources_per_worker": {"train_slot": 1}},
        "checkpoint": {"every_steps": every, "max_failures": 1, "keep": 2},
        "tracking": {"registered_model": name},
    }
    path = cluster["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


def submit(cluster, recipe: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(cluster["s3"].env(), PYTHONPATH=str(REPO), RAY_AUTH_MODE="disabled")
    argv = [sys.executable, "-m", "pipelines", "submit", str(recipe), "--address", cluster["head"].address,
            "--storage", f"s3://{BUCKET}/{recipe.stem}", "--runtime-env", str(cluster["runtime_env"]), "--follow"]
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)  # noqa: SIM115


def train_worker_nodes(head) -> list[str]:
    from ray.util.state import list_actors
    actors = list_actors(address=head.address, filters=[("class_name", "=", "RayTrainWorker")], detail=True,
                         timeout=30, limit=1000)
    return [a.node_id for a in actors]


def mlflow_db(cluster, name: str) -> Path:
    """The job driver's MLflow store: the workdir's local mirror in the head node's own TMPDIR."""
    import hashlib
    key = hashlib.sha256(f"s3://{BUCKET}/{name}".encode()).hexdigest()[:16]
    return cluster["root"] / "a" / "tmpdir" / "bert4ray-workdirs" / key / "mlflow.db"


def logged_steps(db: Path) -> list[int]:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return [s for (s,) in con.execute("SELECT step FROM metrics WHERE key = 'loss' ORDER BY timestamp, step")]
    except sqlite3.OperationalError:
        return []


def registered_step(s3, prefix: str) -> int | None:
    """Step of the latest checkpoint Ray Train registered (its snapshot in the bucket)."""
    for key in s3.keys(BUCKET, f"{prefix}/ray/"):
        if key.endswith("checkpoint_manager_snapshot.json"):
            body = s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
            try:
                latest = json.loads(body)["latest_checkpoint_result"]
            except (ValueError, KeyError):
                return None
            return int(latest["metrics"]["step"]) if latest else None
    return None


def test_one_worker_per_node_succeeds(cluster):
    head, node, s3 = cluster["head"], cluster["node"], cluster["s3"]
    recipe = write_recipe(cluster, "two-nodes", total=12, every=6)
    log = cluster["root"] / "two-nodes.log"
    start = time.monotonic()
    proc = submit(cluster, recipe, log)
    assert proc.wait(timeout=900) == 0, log.read_text()[-4000:]
    text = log.read_text()
    assert re.search(r"^job \S+: SUCCEEDED", text, re.M), text[-3000:]
    nodes = train_worker_nodes(head)
    assert len(nodes) == 2 and node.node_id in nodes and len(set(nodes)) == 2, nodes
    keys = s3.keys(BUCKET, "two-nodes/")
    assert any("/checkpoint_" in k for k in keys) and any(k.endswith("/model/config.json") for k in keys)
    assert not list((cluster["root"] / "b").rglob("checkpoint_*"))      # nothing on the node's disk
    print(f"\n[two nodes] 12 steps, one worker per node: SUCCEEDED in {time.monotonic() - start:.0f} s")


def test_second_node_killed_after_a_checkpoint_resumes_from_the_bucket(cluster):
    head, s3 = cluster["head"], cluster["s3"]
    # Steps take a fraction of a second here and the bucket's checkpoint record trails the logged
    # steps by a second or two: enough steps after the first checkpoint that the kill lands mid-run.
    total, every = 72, 12
    recipe = write_recipe(cluster, "two-nodes-kill", total=total, every=every)
    log = cluster["root"] / "kill.log"
    start = time.monotonic()
    proc = submit(cluster, recipe, log)
    try:
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint in time"
            saved = registered_step(s3, "two-nodes-kill")
            db = mlflow_db(cluster, "two-nodes-kill")
            steps = logged_steps(db) if db.is_file() else []
            if saved and steps and steps[-1] >= saved + 2:
                break
            time.sleep(0.3)
        killed_at, restore_from = steps[-1], saved
        killed = cluster["node"].kill()
        # The lost machine comes back (a fresh node: new temp dir, same slot); the run resumes.
        cluster["node"] = RayNode(head, num_cpus=1, resources={"node_b": 1, "train_slot": 1},
                                  extra_env=node_env(cluster["root"] / "b2", s3))
        cluster["node"].start()
        assert proc.wait(timeout=900) == 0, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    text = log.read_text()
    assert re.search(r"^job \S+: SUCCEEDED", text, re.M), text[-3000:]
    steps = logged_steps(db)
    redone = [s for i, s in enumerate(steps) if s in steps[:i]]
    assert max(steps) == total and sorted(set(steps)) == list(range(1, total + 1))
    # Resumed from a checkpoint in the bucket, never from the start: the one seen before the kill,
    # or a later one the workers (ahead of the logged steps) had completed before it landed.
    resumed_from = min(redone) - 1 if redone else None
    assert resumed_from is not None and resumed_from % every == 0, (restore_from, redone)
    assert resumed_from >= restore_from, (restore_from, killed_at, redone)
    print(f"\n[two nodes] killed node b ({len(killed)} processes) at step {killed_at}; resumed from the "
          f"step-{resumed_from} checkpoint in the bucket; {len(redone)} steps redone; finished "
          f"{max(steps)}/{total} in {time.monotonic() - start:.0f} s")
