"""End to end on a real S3 server (moto on loopback) and nothing else: `bert4ray train` of a small
SimBERT recipe whose data, workdir (Ray Train checkpoints, run files, exported model) and MLflow
artifacts are in the bucket; `--resume` from a second, empty local cache reads its checkpoint from
the bucket; the model loads back through Transformer.from_pretrained("s3://...") and
`bert4ray serve --model s3://... --index s3://...` answers (the index built by `bert4ray index`
from a bucket corpus into the bucket)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import httpx
import pytest

from tests.serving.serve_process import BIN, SERVING_LINE, ServeProcess
from tests.storage.s3server import S3Server, environ, free_port

BUCKET = "bert4ray-e2e"
REPO_DATA = "pipelines/data/simbert_sample.jsonl"


def recipe(tmp_path):
    path = tmp_path / "simbert-s3.yaml"
    path.write_text(json.dumps({
        "name": "simbert-s3", "workdir": f"s3://{BUCKET}/work",
        "model": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
                  "max_position_embeddings": 64, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        "data": {"train": [f"s3://{BUCKET}/data/*.jsonl"], "max_length": 32, "validation_fraction": 0.1},
        "task": {"name": "simbert"},
        "optim": {"lr": 2e-3, "batch_size": 8},
        "schedule": {"max_steps": 16, "warmup_steps": 2, "log_every": 4},
        "checkpoint": {"every_steps": 8, "stop_after": 8, "keep": 2},
        "tracking": {"registered_model": "simbert-s3"}}))
    return path


def train(args, env, cwd, log):
    proc = subprocess.run([str(BIN / "bert4ray"), "train", *args, "--quiet"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)
    log.write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout.strip().splitlines()


def loss_steps(db_file) -> list[int]:
    with sqlite3.connect(db_file) as db:
        return sorted(r[0] for r in db.execute("select step from metrics where key = 'loss'"))


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_train_resume_load_and_serve_from_the_bucket(tmp_path):
    import os
    with S3Server(log_dir=tmp_path) as s3:
        s3.create_bucket(BUCKET)
        with open(REPO_DATA, "rb") as fh:
            s3.put(BUCKET, "data/groups.jsonl", fh.read())
        env = {**os.environ, **s3.env(), "BERT4RAY_MODEL_CACHE": str(tmp_path / "models")}
        env.pop("MLFLOW_TRACKING_URI", None)
        path = recipe(tmp_path)
        # Stopped after its first checkpoint; the local mirror of the workdir is then thrown away.
        first = train([str(path)], {**env, "BERT4RAY_WORKDIR_CACHE": str(tmp_path / "mirror-a")}, tmp_path,
                      tmp_path / "train-1.log")
        assert first[-1].startswith("stopped at step 8"), first
        run_id = s3.client().get_object(Bucket=BUCKET, Key="work/runs/simbert-s3.latest")["Body"].read().decode()
        checkpoints = {k.split("/")[3] for k in s3.keys(BUCKET, f"work/ray/{run_id}/") if "/checkpoint_" in k}
        assert checkpoints, s3.keys(BUCKET, "work/ray/")

        out = train([str(path), "--resume"], {**env, "BERT4RAY_WORKDIR_CACHE": str(tmp_path / "mirror-b")},
                    tmp_path, tmp_path / "train-2.log")
        model_uri = f"s3://{BUCKET}/work/runs/{run_id}/model"
        assert out[-1] == model_uri, out
        keys = s3.keys(BUCKET, "work/")
        for name in ("config.json", "model.safetensors", "vocab.txt", "_bert4ray_complete"):
            assert f"work/runs/{run_id}/model/{name}" in keys
        assert any(k.startswith("work/mlartifacts/") and k.endswith("MLmodel") for k in keys), keys
        assert any(k.startswith("work/mlartifacts/") and k.endswith("recipe.yaml") for k in keys), keys
        assert not (tmp_path / "mirror-b" / "ray").exists()     # checkpoints only in the bucket

        # The resumed run logged steps 12 and 16 only: it continued from the bucket's step-8 checkpoint.
        db = tmp_path / "mlflow.db"
        db.write_bytes(s3.client().get_object(Bucket=BUCKET, Key="work/mlflow.db")["Body"].read())
        assert loss_steps(db) == [4, 8, 12, 16]
        # The registered model's files are the bucket's objects: its source is a bucket URI.
        from mlflow import MlflowClient
        client = MlflowClient(f"sqlite:///{db}")
        (version,) = client.search_model_versions("name='simbert-s3'")
        model_id = version.model_id or version.source.removeprefix("models:/")
        location = client.get_logged_model(model_id).artifact_location
        assert location.startswith(f"s3://{BUCKET}/work/mlartifacts/"), location
        assert f"{location.removeprefix(f's3://{BUCKET}/')}/MLmodel" in keys, (location, keys)
        assert "secret" not in (tmp_path / "train-2.log").read_text().lower().replace("aws_secret", "")

        with environ(s3.env()), pytest.MonkeyPatch.context() as mp:
            mp.setenv("BERT4RAY_MODEL_CACHE", str(tmp_path / "models-test"))
            from components.model import Transformer
            model = Transformer.from_pretrained(model_uri)
            assert model.config.hidden_size == 32

        # An index of a bucket corpus, built with the bucket model and written to the bucket.
        texts = ["电脑开机很慢怎么办", "今天天气怎么样", "我的快递还没到", "怎么修改银行卡密码"]
        s3.put(BUCKET, "corpora/faq.jsonl", "".join(json.dumps({"id": f"q{i}", "text": t}, ensure_ascii=False)
                                                    + "\n" for i, t in enumerate(texts)).encode())
        index_uri = f"s3://{BUCKET}/indexes/faq"
        built = subprocess.run([str(BIN / "bert4ray"), "index", "--model", model_uri, "--corpus",
                                f"s3://{BUCKET}/corpora/faq.jsonl", "--out", index_uri], cwd=tmp_path,
                               env={**env, "BERT4RAY_MODEL_CACHE": str(tmp_path / "models-index")},
                               capture_output=True, text=True, timeout=300)
        assert built.returncode == 0, built.stderr[-3000:]

        port = free_port()
        serve = ServeProcess([str(BIN / "bert4ray"), "serve", "--model", model_uri, "--index", index_uri,
                              "--port", str(port), "--ready-timeout", "240"], tmp_path, tmp_path / "serve.log",
                             env={**s3.env(), "BERT4RAY_MODEL_CACHE": str(tmp_path / "models-serve")})
        try:
            base = serve.wait_for(SERVING_LINE, 300).group(1)
            r = httpx.post(f"{base}/v1/similar", json={"text": "电脑开机很慢怎么办", "n": 4, "k": 2}, timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["candidates"]
            r = httpx.post(f"{base}/v1/search", json={"query": "电脑开机很慢怎么办", "k": 2}, timeout=60)
            assert r.status_code == 200, r.text
            hits = r.json()["hits"]
            assert len(hits) == 2 and hits[0]["id"] == "q0", hits      # the query is in the corpus
        finally:
            serve.stop()
    assert sys.executable
