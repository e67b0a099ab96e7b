"""A run killed while a checkpoint is being uploaded to the bucket leaves the previous checkpoint
as the latest: `--resume` continues from it. The upload window is made certain, not raced: once
Ray Train has recorded a checkpoint in the bucket (step R), the test SIGSTOPs its own S3 server
(training itself does not touch the bucket between checkpoints), waits until the workers log step
R + EVERY (so that checkpoint's upload has started and cannot finish), SIGKILLs every process of
the training command it started, then SIGCONTs the server."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import time

import psutil
import pytest

from tests.serving.serve_process import BIN
from tests.storage.s3server import S3Server

BUCKET = "bert4ray-upload"
TOTAL, EVERY = 120, 10


def steps_logged(db) -> list[int]:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return [s for (s,) in con.execute("SELECT step FROM metrics WHERE key = 'loss' ORDER BY timestamp, step")]
    except sqlite3.OperationalError:
        return []


def latest_registered(s3) -> int | None:
    for key in s3.keys(BUCKET, "work/ray/"):
        if key.endswith("checkpoint_manager_snapshot.json"):
            latest = json.loads(s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read())["latest_checkpoint_result"]
            return int(latest["metrics"]["step"]) if latest else None
    return None


def kill_tree(proc: subprocess.Popen) -> int:
    victims = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return len(victims)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_kill_during_upload_keeps_the_previous_checkpoint_latest(tmp_path):
    from pipelines.corpora import peoples_daily_rows
    with S3Server(log_dir=tmp_path) as s3:
        s3.create_bucket(BUCKET)
        s3.put(BUCKET, "data/pd.jsonl", "".join(json.dumps({"text": r["text"]}, ensure_ascii=False) + "\n"
                                                for r in peoples_daily_rows()[:600]).encode())
        recipe = tmp_path / "r.yaml"
        recipe.write_text(json.dumps({
            "name": "upload", "workdir": f"s3://{BUCKET}/work",
            "model": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
                      "max_position_embeddings": 64, "vocab_max_size": 1500},
            "data": {"train": [f"s3://{BUCKET}/data/pd.jsonl"], "max_length": 48, "validation_fraction": 0.1},
            "optim": {"batch_size": 8}, "schedule": {"max_steps": TOTAL, "warmup_steps": 2, "log_every": 1},
            "checkpoint": {"every_steps": EVERY, "keep": 3}, "tracking": {"registered_model": "upload"}}))
        mirror = tmp_path / "mirror"
        env = {**os.environ, **s3.env(), "BERT4RAY_WORKDIR_CACHE": str(mirror)}
        env.pop("MLFLOW_TRACKING_URI", None)
        db = mirror / hashlib.sha256(f"s3://{BUCKET}/work".encode()).hexdigest()[:16] / "mlflow.db"
        log = open(tmp_path / "train-1.log", "w")  # noqa: SIM115 - the process's lifetime
        proc = subprocess.Popen([str(BIN / "bert4ray"), "train", str(recipe), "--quiet"], cwd=tmp_path, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        stopped = False
        try:
            deadline = time.monotonic() + 600
            # Uploads may lag training: whichever checkpoint Ray Train has recorded first is "R".
            while (restore := latest_registered(s3)) is None:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "train-1.log").read_text()[-3000:]
                time.sleep(0.2)
            os.kill(s3.proc.pid, signal.SIGSTOP)                   # the second one's upload will hang
            stopped = True
            # Step restore + EVERY is logged just before its checkpoint is saved and uploaded; the
            # upload hangs on the stopped server until pyarrow's low-speed timeout (seconds) fails it.
            while steps_logged(db)[-1] < restore + EVERY:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            killed = kill_tree(proc) if proc.poll() is None else 0
        finally:
            if stopped:
                os.kill(s3.proc.pid, signal.SIGCONT)
            if proc.poll() is None:
                kill_tree(proc)
            log.close()
        assert latest_registered(s3) == restore                    # the interrupted one never became latest

        # --resume (the machine restarted: same local MLflow store; checkpoints only in the bucket)
        # continues from that checkpoint.
        resumed = subprocess.run([str(BIN / "bert4ray"), "train", str(recipe), "--quiet", "--resume"], cwd=tmp_path,
                                 env=env, capture_output=True, text=True, timeout=900)
        assert resumed.returncode == 0, resumed.stderr[-4000:]
        steps = steps_logged(db)
        redone = [s for i, s in enumerate(steps) if s in steps[:i]]
        assert max(steps) == TOTAL and sorted(set(steps)) == list(range(1, TOTAL + 1))
        assert redone and min(redone) == restore + 1, (restore, redone)
        assert latest_registered(s3) == TOTAL
        how = f"{killed} processes killed during" if killed else "the run failed on"
        print(f"\n[upload killed] {how} an upload after step {restore}; the step-{restore} "
              f"checkpoint stayed latest; --resume redid steps {min(redone)}-{max(redone)} and finished {TOTAL}/{TOTAL}")
