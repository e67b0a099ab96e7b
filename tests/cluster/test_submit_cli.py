"""`bert4ray submit` / `bert4ray jobs` without a cluster: what a job would carry, and the errors that
must come before any connection."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest
import yaml

from pipelines.cli import build_parser, main
from pipelines.commands import submit
from pipelines.recipe import load_recipe, to_dict

REPO = Path(__file__).resolve().parents[2]
MLM = str(REPO / "pipelines" / "recipes" / "mlm-tiny.yaml")


def parse(*argv: str):
    return build_parser().parse_args(["submit", *argv])


def test_local_submission_carries_the_checked_recipe(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = tmp_path / "store"
    args = parse(MLM, "--address", "http://127.0.0.1:8265", "--storage", str(store),
                 "--set", "schedule.max_steps=5")
    entrypoint, env, recipe = submit.build_submission(args, local=True)

    assert entrypoint == "python -m pipelines train env:BERT4RAY_RECIPE_YAML --quiet"
    job_args = build_parser().parse_args(shlex.split(entrypoint)[3:])     # the job's own command line
    assert job_args.recipe == "env:BERT4RAY_RECIPE_YAML" and job_args.quiet
    assert env["working_dir"] == str(REPO) and ".git" in env["excludes"] and env["pip"]
    assert env["env_vars"]["DS_ACCELERATOR"] == "cpu"
    assert env["env_vars"]["RAY_OVERRIDE_JOB_RUNTIME_ENV"] == "1"
    assert "MLFLOW_TRACKING_URI" not in env["env_vars"]
    assert store.is_dir() and recipe.workdir == str(store)

    # What the job loads from its environment is the recipe checked here, workdir included.
    monkeypatch.setenv(submit.RECIPE_ENV, env["env_vars"][submit.RECIPE_ENV])
    in_job = load_recipe(job_args.recipe)
    assert to_dict(in_job) == to_dict(recipe)
    assert in_job.schedule.max_steps == 5 and in_job.workdir == str(store) and in_job.name == "mlm-tiny"
    from ray.runtime_env import RuntimeEnv
    RuntimeEnv(**env)

    resumed, _, _ = submit.build_submission(parse(MLM, "--address", "x", "--storage", str(store), "--resume"), True)
    assert resumed.endswith(" --resume")


def test_local_cluster_without_storage_uses_the_recipe_workdir_here(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)                    # no cluster/runtime_env.yaml here: no runtime_env file
    _, env, recipe = submit.build_submission(parse(MLM, "--address", "http://127.0.0.1:8265"), local=True)
    assert recipe.workdir == str(tmp_path / "bert4ray-runs") and Path(recipe.workdir).is_dir()
    assert set(env) == {"env_vars"}


@pytest.mark.parametrize("storage, message", [
    (None, "--storage is required for a remote cluster"),
    ("shared/bert4ray", "must be an absolute path"),
    ("ftp://host/x", "unknown scheme 'ftp'"),          # buckets: tests/storage (a real S3 server)
])
def test_remote_storage_is_required_and_checked(storage, message, monkeypatch):
    monkeypatch.chdir(REPO)
    argv = [MLM, "--address", "http://10.0.0.1:8265"] + (["--storage", storage] if storage else [])
    with pytest.raises(ValueError, match=message):
        submit.build_submission(parse(*argv), local=False)


def test_remote_storage_path_is_not_created_here(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    target = tmp_path / "mnt" / "shared"
    _, _, recipe = submit.build_submission(
        parse(MLM, "--address", "http://10.0.0.1:8265", "--storage", f"file://{target}"), local=False)
    assert recipe.workdir == str(target) and not target.exists()


def test_gpu_overlay_and_overrides(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    args = parse(MLM, "--address", "http://10.0.0.1:8265", "--storage", "/mnt/bert4ray",
                 "--overlay", "cluster/deepspeed/zero3-gpu.yaml", "--set", "scaling.num_workers=4")
    _, env, recipe = submit.build_submission(args, local=False)
    assert recipe.deepspeed.zero_stage == 3 and recipe.deepspeed.precision == "bf16"
    assert recipe.scaling.num_workers == 4                      # --set wins over the overlay
    assert env["env_vars"]["DS_ACCELERATOR"] == "cuda"
    assert yaml.safe_load(env["env_vars"][submit.RECIPE_ENV])["deepspeed"]["extra"]["zero_optimization"]["stage"] == 3
    with pytest.raises(FileNotFoundError, match="overlay file 'nope.yaml' does not exist"):
        submit.build_submission(parse(MLM, "--address", "x", "--storage", "/mnt/b", "--overlay", "nope.yaml"), False)
    bad = tmp_path / "bad.yaml"
    bad.write_text("deepspeed:\n  zero_stag: 3\n")
    with pytest.raises(ValueError, match="did you mean 'deepspeed.zero_stage'"):
        submit.build_submission(parse(MLM, "--address", "x", "--storage", "/mnt/b", "--overlay", str(bad)), False)


def test_mlflow_uri(monkeypatch):
    monkeypatch.chdir(REPO)
    base = [MLM, "--address", "http://10.0.0.1:8265", "--storage", "/mnt/b"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")     # a file here: meaningless there
    assert "MLFLOW_TRACKING_URI" not in submit.build_submission(parse(*base), False)[1]["env_vars"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert submit.build_submission(parse(*base), False)[1]["env_vars"]["MLFLOW_TRACKING_URI"] == \
        "http://mlflow.internal:5000"
    env = submit.build_submission(parse(*base, "--mlflow-uri", "https://mlflow.team:443"), False)[1]
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "https://mlflow.team:443"


def test_runtime_env_and_data_errors(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    other = tmp_path / "env.yaml"
    other.write_text(f"working_dir: {tmp_path}\n")
    store = ["--storage", str(tmp_path / "store")]
    with pytest.raises(ValueError, match="does not hold bert4ray's pipelines/ package"):
        submit.build_submission(parse(MLM, "--address", "x", *store, "--runtime-env", str(other)), local=True)
    with pytest.raises(FileNotFoundError, match="runtime_env file 'missing.yaml' does not exist"):
        submit.build_submission(parse(MLM, "--address", "x", *store, "--runtime-env", "missing.yaml"), local=True)
    assert not (tmp_path / "store").exists()           # nothing is created for a submission that fails
    # Relative data paths travel in the working_dir, so they must be there.
    base = [MLM, "--address", "http://10.0.0.1:8265", "--storage", "/mnt/b", "--set", "data.source=files"]
    with pytest.raises(FileNotFoundError, match="'no/such.jsonl' is not in the uploaded working_dir"):
        submit.build_submission(parse(*base, "--set", "data.train=no/such.jsonl"), local=False)
    submit.build_submission(parse(*base, "--set", "data.train=pipelines/data/simbert_sample.jsonl"), local=False)
    # Absolute paths: checked here for a cluster on this machine, by the job elsewhere.
    with pytest.raises(FileNotFoundError, match="data file '/no/such.jsonl' does not exist"):
        submit.build_submission(parse(*base, "--set", "data.train=/no/such.jsonl"), local=True)
    submit.build_submission(parse(*base, "--set", "data.train=/no/such.jsonl"), local=False)


def test_broken_recipe_fails_before_any_connection(capsys, tmp_path):
    """Port 9 on loopback has nothing listening: reaching the recipe error proves no connection came first."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\noptim:\n  lrr: 0.1\ndata:\n  source: peoples-daily\n")
    start = time.monotonic()
    code = main(["submit", str(broken), "--address", "http://127.0.0.1:9", "--follow"])
    err = capsys.readouterr().err
    assert code == 2 and time.monotonic() - start < 10
    assert err.strip() == "bert4ray submit: error: unknown recipe key 'optim.lrr'; did you mean 'optim.lr'?"


def test_unreachable_cluster_is_one_line(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["submit", MLM, "--address", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bert4ray submit: error: cannot reach the Ray cluster at http://127.0.0.1:9")
    assert len(err.splitlines()) == 1
    assert main(["submit", MLM]) == 2
    assert "no cluster address" in capsys.readouterr().err
    assert main(["jobs", "list", "--address", "http://127.0.0.1:9"]) == 2
    assert "cannot reach the Ray cluster" in capsys.readouterr().err


def test_exit_codes_and_addresses():
    assert submit.exit_code("SUCCEEDED", 0) == 0
    assert submit.exit_code("FAILED", 2) == 2            # the driver's code: 2 = recipe/data error
    assert submit.exit_code("FAILED", None) == 1
    assert submit.exit_code("STOPPED", None) == submit.STOPPED_EXIT
    assert submit.address_host("http://127.0.0.1:8265") == "127.0.0.1"
    assert submit.address_host("10.0.0.1:8265") == "10.0.0.1"
    assert submit.is_loopback("127.0.0.1") and submit.is_loopback("localhost") and submit.is_loopback("::1")
    assert not submit.is_loopback("10.0.0.1") and not submit.is_loopback("head.example.com")
    assert not submit.cluster_is_local("http://10.0.0.1:8265")      # decided without any request
