"""Object-store locations against a real S3 server (moto on loopback): listing and globs, models
loaded from a bucket through the download cache, and bad input as one line, exit code 2, nothing
written, for train, submit and serve."""

from __future__ import annotations

import json

import pytest
import torch

from tests.storage.s3server import S3Server, bucket_server, environ

pytestmark = pytest.mark.timeout(300)
BUCKET = "bert4ray-loc"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    objects = {"data/a.jsonl": b'{"text": "a"}\n', "data/sub/b.jsonl": b'{"text": "b"}\n', "data/notes.txt": b"x",
               "notamodel/weights.bin": b"x"}
    with bucket_server(tmp_path_factory.mktemp("moto"), BUCKET, objects) as server:
        yield server


def test_list_files_reads_objects_prefixes_and_globs(s3):
    from components import objectstore
    root = f"s3://{BUCKET}/data"
    assert objectstore.list_files(f"{root}/a.jsonl") == [f"{root}/a.jsonl"]
    assert objectstore.list_files(root, (".jsonl",)) == [f"{root}/a.jsonl", f"{root}/sub/b.jsonl"]
    assert objectstore.list_files(f"{root}/*.jsonl") == [f"{root}/a.jsonl"]
    assert objectstore.list_files(f"{root}/*/*.jsonl") == [f"{root}/sub/b.jsonl"]
    assert objectstore.list_files(f"{root}/**/*.jsonl") == [f"{root}/a.jsonl", f"{root}/sub/b.jsonl"]  # as glob's
    assert objectstore.list_files(f"s3://{BUCKET}/**/b.jsonl") == [f"{root}/sub/b.jsonl"]
    with pytest.raises(objectstore.LocationError, match="matches no file"):
        objectstore.list_files(f"{root}/*.parquet")


def test_model_round_trip_through_the_bucket_and_the_cache(s3, tiny_model_dir, tmp_path, monkeypatch):
    from components import objectstore
    from components.model import Transformer
    from components.weights import model_fingerprint
    monkeypatch.setenv("BERT4RAY_MODEL_CACHE", str(tmp_path / "cache"))
    local = tiny_model_dir()
    uri = f"s3://{BUCKET}/models/m1"
    objectstore.upload_dir(local, uri, fingerprint=model_fingerprint(local))
    keys = s3.keys(BUCKET, "models/m1/")
    assert "models/m1/config.json" in keys and f"models/m1/{objectstore.MARKER}" in keys
    assert objectstore.pin_model(uri) == f"{uri}#{model_fingerprint(local)}"
    loaded = Transformer.from_pretrained(uri)
    reference = Transformer.from_pretrained(local)
    for (name, a), (_, b) in zip(loaded.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name
    entries = [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and not list((tmp_path / "cache").glob(".*tmp*"))
    Transformer.from_pretrained(uri)                  # served from the cache: still one entry
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]) == 1


def _cli(args, env, capsys, cwd=None, monkeypatch=None):
    """`bert4ray ARGS` in this process (the checks run before Ray; a subprocess would spend its
    time importing): (exit code, stderr)."""
    from pipelines.cli import main
    with environ(env):
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        code = main(args)
    return code, capsys.readouterr().err


def _train_args(tmp_path, workdir, data):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({"name": "bad", "workdir": workdir, "data": {"train": [data]}}))
    return ["train", str(recipe), "--quiet"]


@pytest.mark.parametrize("case", ["scheme", "bucket", "data"])
def test_train_bad_locations_fail_in_one_line(s3, tmp_path, case, capsys, monkeypatch):
    good_data = f"s3://{BUCKET}/data/a.jsonl"
    workdir, data, expected = {
        "scheme": ("nosuch://bucket/runs", good_data, "unknown scheme"),
        "bucket": ("s3://no-such-bucket-x/runs", good_data, "bucket 'no-such-bucket-x' does not exist"),
        "data": (f"s3://{BUCKET}/runs", f"s3://{BUCKET}/data/*.parquet", "matches no file"),
    }[case]
    before = s3.keys(BUCKET)
    code, err = _cli(_train_args(tmp_path, workdir, data), s3.env(), capsys, tmp_path, monkeypatch)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], err
    assert (workdir.split("/runs")[0] in lines[0]) or (data in lines[0])      # names the location
    assert s3.keys(BUCKET) == before                                          # nothing written
    assert not any(p.name != "r.yaml" for p in tmp_path.iterdir())


def test_submit_refuses_a_missing_bucket(s3, capsys):
    code, err = _cli(["submit", "pipelines/recipes/mlm-tiny.yaml", "--address", "http://10.0.0.9:8265",
                      "--storage", "s3://no-such-bucket-y/p"], s3.env(), capsys)
    assert code == 2, err
    assert err.strip().count("\n") == 0 and "bucket 'no-such-bucket-y' does not exist" in err


def test_serve_refuses_a_bucket_prefix_without_config(s3, capsys):
    from serving.__main__ import main
    capsys.readouterr()
    assert main(["--model", f"s3://{BUCKET}/notamodel"]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "notamodel" in line and "config.json" in line, line


def test_wrong_credentials_are_refused_by_the_server(tmp_path, capsys, monkeypatch):
    with S3Server(auth=True, log_dir=tmp_path) as server:
        server.create_bucket(BUCKET)
        server.create_user_key()
        from components import objectstore
        with environ(server.env()):
            objectstore.write_bytes(f"s3://{BUCKET}/ok", b"1")          # the real key works
        wrong = server.env(secret="not-the-secret")
        code, err = _cli(_train_args(tmp_path, f"s3://{BUCKET}/runs", f"s3://{BUCKET}/ok"), wrong, capsys,
                         tmp_path, monkeypatch)
        assert code == 2, err
        line = err.strip()
        assert "\n" not in line and "access denied" in line and f"s3://{BUCKET}/runs" in line, line
        assert "not-the-secret" not in err
        assert server.keys(BUCKET) == ["ok"]


def test_index_reads_its_corpus_from_and_writes_the_index_to_the_bucket(s3, tiny_model_dir, tmp_path):
    """`bert4ray index` as users type it, with s3:// corpus and output; a missing corpus object is
    one line and exit code 2 before Ray starts."""
    import os
    import subprocess
    import sys

    from components import objectstore
    from components.index import VectorIndex
    from components.weights import model_fingerprint
    texts = ["今天天气怎么样", "明天会下雨吗", "我的快递还没到", "怎么修改银行卡密码"]
    s3.put(BUCKET, "corpora/faq.jsonl", "".join(json.dumps({"id": f"q{i}", "text": t}, ensure_ascii=False) + "\n"
                                                for i, t in enumerate(texts)).encode())
    model = tiny_model_dir()
    env = {**os.environ, **s3.env()}
    cmd = [sys.executable, "-m", "pipelines", "index", "--model", str(model), "--out", f"s3://{BUCKET}/indexes/faq"]
    missing = subprocess.run([*cmd, "--corpus", f"s3://{BUCKET}/corpora/nope.jsonl"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "does not exist" in missing.stderr, missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    done = subprocess.run([*cmd, "--corpus", f"s3://{BUCKET}/corpora/faq.jsonl"], env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{objectstore.MARKER}" in "".join(s3.keys(BUCKET, "indexes/faq/"))
    # What a serving replica does with `--index s3://...`: one download into its node's cache.
    from components.locations import resolve_index
    local = resolve_index(f"s3://{BUCKET}/indexes/faq", cache_dir=tmp_path / "cache")
    assert resolve_index(f"s3://{BUCKET}/indexes/faq", cache_dir=tmp_path / "cache") == local
    index = VectorIndex.load(local, expected_fingerprint=model_fingerprint(model))
    assert len(index) == len(texts)


def test_serve_checks_a_bucket_index_before_starting(s3, tiny_model_dir, capsys):
    """`--index s3://...` without index.json, or built with another model: one line, exit code 2."""
    from serving.__main__ import main
    model = tiny_model_dir()
    capsys.readouterr()
    assert main(["--model", str(model), "--index", f"s3://{BUCKET}/notamodel"]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and f"s3://{BUCKET}/notamodel" in line and "index.json" in line, line
    s3.put(BUCKET, "other-index/index.json", json.dumps({"model_fingerprint": "0" * 64}).encode())
    assert main(["--model", str(model), "--index", f"s3://{BUCKET}/other-index"]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "built with another model" in line, line
