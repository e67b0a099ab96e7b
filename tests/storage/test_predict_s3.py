"""`bert4ray predict` with its input, output and model in a bucket of a real S3 server (moto on
loopback): input files listed and cut into chunks in the bucket, chunks read from it, outputs and
errors uploaded whole, a re-run that skips what the bucket already holds, and errors that name the
object; end to end, the command as users type it with every location an s3:// URI."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.serving.serve_process import BIN
from tests.storage.s3server import bucket_server

pytestmark = pytest.mark.timeout(600)
BUCKET = "bert4ray-predict"
TEXTS = ["怎么修改银行卡密码", "今天天气怎么样", "我的快递还没到", "hello world playing bert", "明天会下雨吗"]


def jsonl(rows: list) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows).encode()


def parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=2)
    return sink.getvalue().to_pybytes()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    objects = {
        "in/a.jsonl": jsonl([{"id": i, "text": t} for i, t in enumerate(TEXTS[:3])] + ["", {"id": 9, "text": ""}]),
        "in/sub/b.parquet": parquet(pa.table({"text": TEXTS[3:], "n": [1, 2]})),
        "in/c.csv": ("text,id\n" + "\n".join(f"{t},{i}" for i, t in enumerate(TEXTS)) + "\n").encode(),
        "in/_skipped/d.jsonl": jsonl([{"text": "x"}]),
        "in/notes.txt": b"not an input",
    }
    with bucket_server(tmp_path_factory.mktemp("moto"), BUCKET, objects) as server:
        yield server


def cli(*args, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "bert4ray"), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})


def read_parquet(s3, key: str) -> pa.Table:
    return pq.read_table(pa.BufferReader(s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()))


def test_inputs_are_listed_chunked_and_read_in_the_bucket(s3):
    from pipelines import predict_io as pio
    files = pio.find_inputs(f"s3://{BUCKET}/in", f"s3://{BUCKET}/in/out")
    assert [(f.name, f.fmt) for f in files] == [("a.parquet", "jsonl"), ("c.parquet", "csv"),
                                                  ("sub/b.parquet", "parquet")]
    assert [f.name for f in pio.find_inputs(f"s3://{BUCKET}/in/*.csv", "o")] == ["c.parquet"]
    rows = {}
    for index, f in enumerate(files):
        pio.inspect(f, "text", ["embedding"])
        pio.plan(f, index, "text", ["embedding"], chunk_bytes=40)          # several chunks a file
        table = pio.read_chunk(pa.table({"chunk": [json.dumps(c) for c in f.chunks]}))
        rows[f.name] = list(zip(table["_row"].to_pylist(), table["_value"].to_pylist(), table["_error"].to_pylist()))
    assert len(files[0].chunks) > 1 and files[0].rows == 4            # the blank line is no row
    assert rows["a.parquet"] == [(1, json.dumps(TEXTS[0], ensure_ascii=False), None),
                                 (2, json.dumps(TEXTS[1], ensure_ascii=False), None),
                                 (3, json.dumps(TEXTS[2], ensure_ascii=False), None), (5, '""', None)]
    assert [v for _, v, _ in rows["c.parquet"]] == [json.dumps(t, ensure_ascii=False) for t in TEXTS]
    assert [r for r, _, _ in rows["sub/b.parquet"]] == [1, 2] and len(files[2].chunks) == 1
    assert pio.input_table(files[2]).column_names == ["text", "n"]


def test_bad_bucket_inputs_are_one_line_errors(s3):
    from pipelines import predict_io as pio
    with pytest.raises(FileNotFoundError, match=f"input 's3://{BUCKET}/in/nope' matches no file"):
        pio.find_inputs(f"s3://{BUCKET}/in/nope", "o")
    with pytest.raises(ValueError, match="inputs are JSON Lines"):
        pio.find_inputs(f"s3://{BUCKET}/in/notes.txt", "o")
    with pytest.raises(ValueError, match="bucket 'no-such-bucket-p' does not exist"):
        pio.find_inputs("s3://no-such-bucket-p/in", "o")


def test_an_actor_given_a_bucket_model_fetches_it_into_its_own_cache(s3, tiny_model_dir, tmp_path, monkeypatch):
    """What an actor on another node does: the driver hands it the URI, not its own cache path."""
    from components import objectstore
    from components.simbert import SimBERT
    from components.weights import model_fingerprint
    from pipelines.inference import Predictor
    from pipelines.model_store import for_actors
    local = tiny_model_dir()
    uri = f"s3://{BUCKET}/models/actor"
    objectstore.upload_dir(local, uri, fingerprint=model_fingerprint(local))
    assert for_actors(uri, tmp_path / "driver-cache") == uri
    assert for_actors(str(local), local) == str(local)
    monkeypatch.setenv("BERT4RAY_MODEL_CACHE", str(tmp_path / "node-cache"))
    out = Predictor("embed", uri)(pa.table({"text": TEXTS[:2]}))
    assert len(list((tmp_path / "node-cache").iterdir())) == 1
    want = SimBERT.from_pretrained(local).encode(TEXTS[:2])
    assert np.abs(np.asarray(out["embedding"].to_pylist()) - want).max() <= 1e-5


@pytest.mark.slow
def test_command_with_input_output_and_model_in_the_bucket(s3, tiny_model_dir, tmp_path):
    """As users type it: the model, IN and OUT are s3:// URIs; bad rows go to the bucket's
    OUT.errors.jsonl (exit code 3), vectors equal SimBERT.encode in input order, and a re-run
    skips every file the bucket already holds, without starting Ray."""
    from components import objectstore
    from components.simbert import SimBERT
    from components.weights import model_fingerprint
    local = tiny_model_dir()
    model = f"s3://{BUCKET}/models/tiny"
    objectstore.upload_dir(local, model, fingerprint=model_fingerprint(local))
    env = {**s3.env(), "BERT4RAY_MODEL_CACHE": str(tmp_path / "cache")}
    args = ["predict", "embed", "--model", model, "--input", f"s3://{BUCKET}/in", "--output", f"s3://{BUCKET}/out",
            "--quiet"]
    proc = cli(*args, env=env)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == f"1 bad row(s) -> s3://{BUCKET}/out.errors.jsonl"
    keys = s3.keys(BUCKET, "out")
    assert keys == ["out.errors.jsonl", "out/_errors/a.jsonl", "out/_predict.json", "out/a.parquet",
                    "out/c.parquet", "out/sub/b.parquet"], keys
    errors = [json.loads(x) for x in s3.client().get_object(Bucket=BUCKET, Key="out.errors.jsonl")["Body"].read()
              .decode().splitlines()]
    assert errors == [{"file": f"s3://{BUCKET}/in/a.jsonl", "row": 5, "reason": errors[0]["reason"]}]
    encoder = SimBERT.from_pretrained(local)
    a = read_parquet(s3, "out/a.parquet")
    assert a["id"].to_pylist() == [0, 1, 2]
    assert np.abs(np.asarray(a["embedding"].to_pylist()) - encoder.encode(TEXTS[:3])).max() <= 1e-5
    b = read_parquet(s3, "out/sub/b.parquet")
    assert b["n"].to_pylist() == [1, 2]
    assert np.abs(np.asarray(b["embedding"].to_pylist()) - encoder.encode(TEXTS[3:])).max() <= 1e-5
    assert read_parquet(s3, "out/c.parquet")["text"].to_pylist() == TEXTS

    again = cli(*args, env=env)
    assert again.returncode == 3, again.stderr[-3000:]
    assert f"skipping 3 file(s) already in s3://{BUCKET}/out" in again.stdout
    assert "predicted" not in again.stdout                             # nothing left to predict

    missing = cli("predict", "embed", "--model", model, "--input", f"s3://{BUCKET}/nothing/*.jsonl",
                  "--output", f"s3://{BUCKET}/out2", env=env)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    assert f"s3://{BUCKET}/nothing/*.jsonl" in missing.stderr and "matches no file" in missing.stderr
    assert not s3.keys(BUCKET, "out2")
