"""`bert4ray submit` against a Ray head that this module starts on loopback (its own ports and temp
dir) and stops by the process ids it started: a job that trains, tracks and exports; a job whose
recipe is broken; and a run that loses a Ray Train worker and resumes from its last checkpoint.

Slow (three real jobs, minutes on a 2-core machine): `pytest -m slow tests/cluster -s` prints the
measured figures."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.cluster.raycluster import RayHead

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def head():
    h = RayHead()
    h.start()
    yield h
    h.stop()
    assert h.alive() == [], f"processes of the test's Ray head still running: {h.alive()}"
    print(f"\n[cluster] head stopped; {len(h.pids)} processes ended, SIGKILL needed for {h.killed or 'none'}")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small real corpus (People's Daily) and the runtime_env the jobs use: cluster/runtime_env.yaml
    without its pip list (this head runs the project's virtualenv, which has every package; a pip
    list would make Ray clone that 2 GB virtualenv for the job)."""
    from pipelines.corpora import peoples_daily_rows

    d = tmp_path_factory.mktemp("cluster")
    corpus = d / "pd.jsonl"
    corpus.write_text("".join(json.dumps({"text": r["text"]}, ensure_ascii=False) + "\n"
                              for r in peoples_daily_rows()[:700]), encoding="utf-8")
    env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text(encoding="utf-8"))
    assert env.pop("pip")
    (d / "runtime_env.yaml").write_text(yaml.safe_dump(env), encoding="utf-8")
    return {"dir": d, "corpus": corpus, "runtime_env": d / "runtime_env.yaml"}


def write_recipe(files, name: str, **sections) -> Path:
    recipe = {
        "name": name, "seed": 0,
        "model": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
                  "max_position_embeddings": 64, "vocab_max_size": 1500,
                  "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        "data": {"train": [str(files["corpus"])], "max_length": 48, "validation_fraction": 0.1},
        "optim": {"lr": 3e-3, "batch_size": 16},
        "schedule": {"max_steps": 24, "warmup_steps": 2, "log_every": 4},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1},
        "checkpoint": {"every_steps": 12, "max_failures": 1},
        "tracking": {"registered_model": name},
    }
    for section, values in sections.items():
        recipe[section] = {**recipe.get(section, {}), **values}
    path = files["dir"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


def cli_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = str(REPO)
    return env


def bert4ray(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines", *argv], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def submit_argv(head, files, recipe: Path, storage: Path) -> list[str]:
    return ["submit", str(recipe), "--address", head.address, "--storage", str(storage),
            "--runtime-env", str(files["runtime_env"]), "--follow"]


def job_id_of(stdout: str) -> str:
    return re.search(r"^submitted job (\S+) to ", stdout, re.M).group(1)


def mlflow_client(storage: Path):
    import mlflow
    return mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}",
                                        registry_uri=f"sqlite:///{storage / 'mlflow.db'}")


@pytest.fixture(scope="module")
def finished_job(head, files) -> dict:
    """One `submit --follow` of a 24-step job, shared by the tests that look at what it left."""
    storage = files["dir"] / "storage-ok"
    recipe = write_recipe(files, "cluster-tiny")
    start = time.monotonic()
    proc = bert4ray(*submit_argv(head, files, recipe, storage), timeout=600)
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"proc": proc, "storage": storage, "wall": wall}


def test_submit_follow_trains_tracks_and_exports(head, finished_job, record_property):
    from components.model import Transformer
    from components.tokenizer import Tokenizer

    proc, storage, wall = finished_job["proc"], finished_job["storage"], finished_job["wall"]
    job = job_id_of(proc.stdout)
    assert f"job {job}: SUCCEEDED" in proc.stdout
    print(f"\n[cluster] submit --follow of a 24-step job: SUCCEEDED in {wall:.1f} s")
    record_property("job_wall_s", round(wall, 1))

    # The exported model directory, under --storage, printed by the job's last line.
    model_dir = Path(re.search(rf"^({re.escape(str(storage))}/runs/\S+/model)$", proc.stdout, re.M).group(1))
    assert {"config.json", "model.safetensors", "vocab.txt", "bert4ray.json"} <= {p.name for p in model_dir.iterdir()}
    model = Transformer.from_pretrained(model_dir).eval()
    batch = Tokenizer.from_pretrained(model_dir).encode_batch(["人民日报社论"])
    assert model(batch.input_ids, batch.segment_ids, batch.attention_mask).logits.shape[0] == 1

    # The MLflow run in the job's store: finished, metrics at every logged step, model registered.
    run_id = re.search(r"^mlflow run: (\w+)$", proc.stdout, re.M).group(1)
    client = mlflow_client(storage)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["workdir"] == str(storage)
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [4, 8, 12, 16, 20, 24]
    versions = [v for v in client.search_model_versions("name='cluster-tiny'") if v.run_id == run_id]
    assert len(versions) == 1

    # `bert4ray jobs` sees the same job.
    listed = bert4ray("jobs", "list", "--address", head.address)
    assert listed.returncode == 0 and re.search(rf"^{job}\tSUCCEEDED\tpython -m pipelines train env:", listed.stdout, re.M)
    status = bert4ray("jobs", "status", job, "--address", head.address)
    assert status.stdout.strip() == "SUCCEEDED"
    logs = bert4ray("jobs", "logs", job, "--address", head.address)
    assert f"mlflow run: {run_id}" in logs.stdout
    missing = bert4ray("jobs", "logs", "no-such-job", "--address", head.address)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1


def test_registered_model_artifacts_outlive_the_job(finished_job):
    """The registered model's files are in the storage, not in the job's temporary working_dir."""
    from urllib.parse import urlparse

    storage, client = finished_job["storage"], mlflow_client(finished_job["storage"])
    run_id = re.search(r"^mlflow run: (\w+)$", finished_job["proc"].stdout, re.M).group(1)
    version = next(v for v in client.search_model_versions("name='cluster-tiny'") if v.run_id == run_id)
    model_id = version.model_id or version.source.removeprefix("models:/")       # MLflow 3: models:/m-...
    location = client.get_logged_model(model_id).artifact_location
    path = Path(urlparse(location).path if location.startswith("file:") else location)
    assert path.is_relative_to(storage), f"model artifacts at {path}, outside the storage {storage}"
    assert list(path.rglob("model.safetensors")), f"no model files under {path}"


def test_broken_recipe_job_fails_fast_with_the_error_in_its_logs(head, files, record_property):
    """A recipe that only the cluster can judge (its init_from model is not there) fails in the job:
    the command exits 2 like `bert4ray train`, the error line is in the job's logs."""
    storage = files["dir"] / "storage-broken"
    recipe = write_recipe(files, "cluster-broken", model={"init_from": "/models/not-on-this-cluster"})
    start = time.monotonic()
    proc = bert4ray(*submit_argv(head, files, recipe, storage), timeout=300)
    wall = time.monotonic() - start
    message = "bert4ray train: error: model.init_from '/models/not-on-this-cluster' is not a directory"
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert message in proc.stdout                              # streamed from the job's logs
    job = job_id_of(proc.stdout)
    assert re.search(rf"^job {job}: FAILED", proc.stderr, re.M)
    assert "Traceback" not in proc.stdout
    assert message in bert4ray("jobs", "logs", job, "--address", head.address).stdout
    assert wall < 120, f"took {wall:.0f} s to fail"
    print(f"\n[cluster] broken recipe: FAILED (exit 2) in {wall:.1f} s")
    record_property("broken_job_wall_s", round(wall, 1))


def test_submit_without_follow_then_jobs_stop(head, files):
    """Without --follow submit returns at once with the job id; `jobs stop` ends the job and
    `jobs status --follow` exits 3 for STOPPED."""
    storage = files["dir"] / "storage-stop"
    recipe = write_recipe(files, "cluster-stop", schedule={"max_steps": 5000})
    argv = [a for a in submit_argv(head, files, recipe, storage) if a != "--follow"]
    proc = bert4ray(*argv, timeout=120)
    assert proc.returncode == 0, proc.stderr
    job = job_id_of(proc.stdout)
    assert f"bert4ray jobs logs {job} --address {head.address} --follow" in proc.stdout
    stop = bert4ray("jobs", "stop", job, "--address", head.address)
    assert stop.returncode == 0 and stop.stdout.strip() == f"job {job}: stop requested"
    waited = bert4ray("jobs", "status", job, "--address", head.address, "--follow", timeout=180)
    assert waited.returncode == 3 and re.search(rf"^job {job}: STOPPED", waited.stderr, re.M), waited.stderr
    assert bert4ray("jobs", "stop", job, "--address", head.address).stdout.strip() == f"job {job}: not running"
    # A stopped job gives its CPUs back: its Train workers are gone, so the next job can be placed.
    deadline = time.monotonic() + 120
    while alive_train_workers(head):
        assert time.monotonic() < deadline, f"Train workers of the stopped job still alive: {alive_train_workers(head)}"
        time.sleep(1)


def alive_train_workers(head) -> list:
    from ray.util.state import list_actors
    return list_actors(address=head.address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
                       timeout=30)


def logged_steps(storage: Path) -> list[int]:
    """Steps of every `loss` record of the (only) run in the job's MLflow store, in logging order."""
    db = storage / "mlflow.db"
    if not db.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return [s for (s,) in con.execute("SELECT step FROM metrics WHERE key = 'loss' ORDER BY timestamp, step")]
    except sqlite3.OperationalError:             # the job has not created the table yet
        return []


def checkpoints(storage: Path) -> dict[int, Path]:
    """step -> checkpoint directory, from the trainer state each checkpoint holds."""
    out = {}
    for state in storage.glob("ray/*/checkpoint_*/trainer_state.json"):
        try:
            out[json.loads(state.read_text())["step"]] = state.parent
        except (OSError, ValueError, KeyError):
            continue                             # still being written
    return out


def registered_checkpoint(storage: Path) -> int | None:
    """Step of the latest checkpoint that Ray Train's controller has registered (its checkpoint
    manager snapshot): the one a restarted worker group resumes from. A checkpoint directory can
    exist before that, while the controller has not yet collected every rank's report."""
    for snapshot in storage.glob("ray/*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]
            return int(latest["metrics"]["step"]) if latest else None
        except (OSError, ValueError, KeyError, TypeError):
            return None                          # being rewritten
    return None


def test_killed_worker_resumes_from_the_last_checkpoint(head, files, record_property):
    storage = files["dir"] / "storage-kill"
    total, every = 72, 12
    recipe = write_recipe(files, "cluster-kill", schedule={"max_steps": total, "log_every": 1},
                          checkpoint={"every_steps": every, "max_failures": 1, "keep": 2})
    out = files["dir"] / "kill.log"
    start = time.monotonic()
    with open(out, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines", *submit_argv(head, files, recipe, storage)],
                                cwd=REPO, env=cli_env(), stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        # Wait for the first registered checkpoint and a few steps past it, then kill one Train worker.
        deadline = time.monotonic() + 420
        while True:
            assert proc.poll() is None, out.read_text()[-3000:]
            saved = registered_checkpoint(storage)
            steps = logged_steps(storage)
            assert time.monotonic() < deadline, (f"no checkpoint and progress past it in 420 s: registered "
                                                 f"checkpoint {saved}, logged steps {steps[-5:]}, job log:\n"
                                                 + out.read_text()[-3000:])
            assert not steps or steps[-1] < total - 6, f"the run got too far ({steps[-1]}) before a kill"
            if saved and steps and steps[-1] >= saved + 3:
                break
            time.sleep(0.2)
        workers = alive_train_workers(head)
        assert len(workers) == 2, workers
        victim = workers[0].pid
        assert head.owns(victim), "the Train worker is not a process of the test's head"
        killed_at, restore_from = logged_steps(storage)[-1], registered_checkpoint(storage)
        os.kill(victim, signal.SIGKILL)
        proc.wait(timeout=420)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    wall = time.monotonic() - start
    text = out.read_text()
    assert proc.returncode == 0, text[-4000:]
    assert re.search(r"^job \S+: SUCCEEDED", text, re.M)

    steps = logged_steps(storage)
    redone = [s for i, s in enumerate(steps) if s in steps[:i]]
    assert max(steps) == total and sorted(set(steps)) == list(range(1, total + 1))
    # After the kill the workers restarted from the checkpoint saved at `restore_from`: the steps
    # after it were trained (and logged) again, the ones before it were not.
    assert redone and min(redone) == restore_from + 1, (restore_from, redone)
    assert killed_at - restore_from <= len(redone) <= killed_at - restore_from + 10, (killed_at, redone)
    run_id = re.search(r"^mlflow run: (\w+)$", text, re.M).group(1)
    run = mlflow_client(storage).get_run(run_id)
    assert run.info.status == "FINISHED"
    model_dir = Path(re.search(rf"^({re.escape(str(storage))}/runs/\S+/model)$", text, re.M).group(1))
    assert (model_dir / "model.safetensors").is_file()
    final = json.loads((checkpoints(storage)[total] / "trainer_state.json").read_text())
    assert final["step"] == total
    print(f"\n[cluster] killed Train worker pid {victim} at step {killed_at}; restored from the step-"
          f"{restore_from} checkpoint; {len(redone)} steps redone ({min(redone)}-{max(redone)}); "
          f"finished at step {max(steps)}/{total}; job wall {wall:.1f} s")
    record_property("steps_redone", len(redone))
    record_property("kill_job_wall_s", round(wall, 1))
