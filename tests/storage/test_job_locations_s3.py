"""mgs, probe and tune read their corpora and dev files from a bucket and write their outputs to
one, against a real S3 server (moto on loopback): the same results as from local files, errors
that name the object (and line), and a model under an uploaded output that resolves from the
bucket."""

from __future__ import annotations

import json

import pytest

from tests.storage.s3server import bucket_server
from tests.tiny_training import GROUPS, train_tiny_simbert

pytestmark = pytest.mark.timeout(600)
BUCKET = "bert4ray-jobs"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    groups = "".join(json.dumps({"texts": g}, ensure_ascii=False) + "\n" for g in GROUPS).encode()
    objects = {"mgs/groups.jsonl": groups, "mgs/bad.jsonl": b'{"texts": ["a", "b"]}\n{"label": 1}\n'}
    with bucket_server(tmp_path_factory.mktemp("moto"), BUCKET, objects) as server:
        yield server


def test_dev_examples_read_from_the_bucket_equal_the_local_file(s3, tmp_path):
    from pipelines.objectives import read_examples
    local = tmp_path / "groups.jsonl"
    local.write_bytes(s3.client().get_object(Bucket=BUCKET, Key="mgs/groups.jsonl")["Body"].read())
    assert read_examples(f"s3://{BUCKET}/mgs/groups.jsonl") == read_examples(local)
    with pytest.raises(ValueError, match=f"s3://{BUCKET}/mgs/bad.jsonl:2"):
        read_examples(f"s3://{BUCKET}/mgs/bad.jsonl")
    with pytest.raises(FileNotFoundError, match=f"dev file 's3://{BUCKET}/mgs/nope.jsonl' does not exist"):
        read_examples(f"s3://{BUCKET}/mgs/nope.jsonl")


def test_mgs_reads_and_writes_the_bucket(s3, tmp_path, vocab_file):
    from components.model import Transformer
    from pipelines.mgs import load_mgs_recipe, run_mgs
    model = train_tiny_simbert(tmp_path / "model", vocab_file, steps=10)
    recipe = load_mgs_recipe(data={
        "name": "mgs-s3", "workdir": str(tmp_path / "runs"), "model": str(model), "steps": 1, "eval_every": 1,
        "decoding": {"strategy": "greedy", "max_new_tokens": 8},
        "data": {"train": f"s3://{BUCKET}/mgs/groups.jsonl", "dev": f"s3://{BUCKET}/mgs/groups.jsonl",
                 "batch_size": 4, "max_length": 32, "max_dev_rows": 4},
        "mgs": {"num_candidates": 2}, "parallel": {"num_actors": 0}, "tracking": {"enabled": False}})
    result = run_mgs(recipe, progress=False, output=f"s3://{BUCKET}/out/mgs")
    assert result.published == f"s3://{BUCKET}/out/mgs"
    keys = s3.keys(BUCKET, "out/mgs/")
    for name in ("history.json", "recipe.yaml", "model/config.json", "model/_bert4ray_complete", "_bert4ray_complete"):
        assert f"out/mgs/{name}" in keys, keys
    loaded = Transformer.from_pretrained(f"s3://{BUCKET}/out/mgs/model")
    assert loaded.config.hidden_size == Transformer.from_pretrained(result.model_dir).config.hidden_size


def test_mgs_command_names_a_missing_bucket_object(s3, tmp_path, tiny_model_dir, capsys):
    from pipelines.cli import main
    recipe = tmp_path / "mgs.yaml"
    recipe.write_text(json.dumps({"name": "m", "workdir": str(tmp_path / "runs"), "model": str(tiny_model_dir()),
                                  "data": {"train": f"s3://{BUCKET}/mgs/missing.jsonl"},
                                  "tracking": {"enabled": False}}))
    capsys.readouterr()
    assert main(["mgs", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"s3://{BUCKET}/mgs/missing.jsonl' does not exist" in err, err


@pytest.mark.slow             # a subprocess with its own Ray: about a minute
def test_probe_reads_a_bucket_corpus_and_writes_to_the_bucket(s3, tmp_path, vocab_file):
    """`bert4ray probe` as users type it (a subprocess: its Ray workers get the S3 variables from
    its environment), once on a bucket glob with a bucket output and once on the same file locally."""
    import os
    import subprocess
    import sys

    import pyarrow.parquet as pq
    import torch

    from components.model import Transformer
    from components.tokenizer import Tokenizer
    from tests.conftest import tiny_config
    torch.manual_seed(2)
    Transformer(tiny_config(Tokenizer(vocab_file).vocab_size, initializer_range=0.3)).save_pretrained(
        tmp_path / "mlm", metadata={"vocab_file": str(vocab_file), "task": "mlm"})
    rows = [{"text": "我在银行修改密码", "words": ["我", "在", "银行", "修改", "密码"]}, {"text": "今天天气很好"}]
    s3.put(BUCKET, "probe/c.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    (tmp_path / "c.jsonl").write_bytes(s3.client().get_object(Bucket=BUCKET, Key="probe/c.jsonl")["Body"].read())
    recipe = tmp_path / "probe.yaml"
    recipe.write_text(json.dumps({"name": "p", "workdir": str(tmp_path / "w"), "model": {"path": str(tmp_path / "mlm")},
                                  "tracking": {"enabled": False}}))
    env = {**os.environ, **s3.env()}

    def probe(files: str, out: str) -> str:
        done = subprocess.run([sys.executable, "-m", "pipelines", "probe", str(recipe), "--set", f"data.files={files}",
                               "--set", f"output.dir={out}", "--quiet"], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip().splitlines()[-1]
    assert probe(f"[s3://{BUCKET}/probe/*.jsonl]", f"s3://{BUCKET}/out/probe") == f"s3://{BUCKET}/out/probe"
    local = probe(f"[{tmp_path / 'c.jsonl'}]", str(tmp_path / "out-local"))
    assert [k for k in s3.keys(BUCKET, "out/probe/") if k.endswith(".parquet")], s3.keys(BUCKET, "out/probe/")
    got = sorted(r["words"] for r in pq.read_table(f"s3://{BUCKET}/out/probe").to_pylist())
    want = sorted(r["words"] for r in pq.read_table(local).to_pylist())
    assert got and got == want


def test_an_mlflow_init_from_reaches_workers_on_other_nodes_through_the_bucket(s3, tiny_model_dir):
    """With a bucket workdir, the model the driver fetched for `init_from: models:/...` is published
    to the bucket and the workers are given that URI (their nodes cannot see the driver's cache)."""
    import dataclasses

    from components.model import Transformer
    from components.weights import model_fingerprint
    from pipelines.recipe import load_recipe
    from pipelines.storage import Workdir
    from pipelines.train import _worker_recipe
    fetched = tiny_model_dir()
    written = load_recipe("pipelines/recipes/mlm-tiny.yaml")
    written = dataclasses.replace(written, model=dataclasses.replace(written.model, init_from="models:/m/1"))
    local = dataclasses.replace(written, model=dataclasses.replace(written.model, init_from=str(fetched)))
    wd = Workdir(f"s3://{BUCKET}/work")
    worker = _worker_recipe(local, written, wd)
    assert worker.model.init_from == f"s3://{BUCKET}/work/init/{model_fingerprint(fetched)[:24]}"
    again = _worker_recipe(local, written, wd)                    # published once
    assert again.model.init_from == worker.model.init_from
    assert Transformer.from_pretrained(worker.model.init_from).config.hidden_size == \
        Transformer.from_pretrained(fetched).config.hidden_size
    local_wd = _worker_recipe(local, written, Workdir("runs-local-unused"))
    assert local_wd.model.init_from == str(fetched)


@pytest.mark.parametrize("command, recipe, key", [
    ("probe", {"model": {"path": "m"}, "data": {"files": ["x.jsonl"]}}, "output.dir"),
    ("tune", {"mode": "training", "recipe": "pipelines/recipes/mlm-tiny.yaml"}, "output.dir"),
    ("mgs", {"model": "m", "data": {"train": "x.jsonl"}}, "--output"),
])
def test_a_bucket_workdir_of_a_local_job_says_where_the_bucket_goes(tmp_path, capsys, command, recipe, key):
    from pipelines.cli import main
    path = tmp_path / f"{command}.yaml"
    path.write_text(json.dumps({"name": "w", "workdir": f"s3://{BUCKET}/work", **recipe}))
    capsys.readouterr()
    assert main([command, str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "recipe key 'workdir'" in err and key in err, err
