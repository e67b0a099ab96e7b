"""MLflow model URIs wherever a command takes a model, against a real SQLite tracking store: models
logged as training logs them (pyfunc from code), `init_from: models:/name@alias` trains,
`bert4ray index --model models:/...` and `bert4ray chat --model runs:/...` run as subprocesses, a
tune recipe's `model:` resolves, and bad URIs end with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from components.model import Transformer
from components.tokenizer import Tokenizer
from tests.tiny_training import GROUPS, train_tiny_simbert

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def store(tmp_path_factory, vocab_file):
    """A SQLite store holding a registered SimBERT (version 1, alias `champion`) and a dialogue
    model logged in a run; MLFLOW_TRACKING_URI points at it for the module."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    from pipelines.tracking import log_pyfunc_model
    from tests.conftest import tiny_config

    root = tmp_path_factory.mktemp("uris")
    simbert = train_tiny_simbert(root / "simbert", vocab_file, steps=20)
    torch.manual_seed(7)
    tok = Tokenizer(vocab_file)
    dialog = root / "dialog"
    Transformer(tiny_config(tok.vocab_size, eos_token_id=tok.sep_id, initializer_range=0.2)).save_pretrained(
        dialog, metadata={"vocab_file": str(vocab_file), "task": "dialog"})
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(utils, "_tracking_uri", None)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("BERT4RAY_MODEL_CACHE", str(root / "cache"))
        experiment = mlflow.create_experiment("uris", artifact_location=(root / "mlartifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            log_pyfunc_model(simbert, "tiny-simbert")
        mlflow.MlflowClient().set_registered_model_alias("tiny-simbert", "champion", "1")
        with mlflow.start_run(experiment_id=experiment) as run:
            log_pyfunc_model(dialog)
        yield {"uri": uri, "simbert": simbert, "dialog": dialog, "dialog_run": run.info.run_id, "root": root}


def cli(*args, store, stdin=None, timeout=600):
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"], "BERT4RAY_MODEL_CACHE": str(store["root"] / "cache")}
    return subprocess.run([sys.executable, "-m", "pipelines", *map(str, args)], cwd=REPO, env=env, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def test_index_builds_from_a_registered_alias(store, tmp_path):
    from components.index import VectorIndex
    from components.simbert import SimBERT
    from components.weights import model_fingerprint

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"texts": g}, ensure_ascii=False) + "\n" for g in GROUPS), encoding="utf-8")
    proc = cli("index", "--model", "models:/tiny-simbert@champion", "--corpus", corpus, "--out", tmp_path / "index",
               store=store)
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = VectorIndex.load(tmp_path / "index")
    assert index.fingerprint == model_fingerprint(store["simbert"])           # the registered model's files
    sim = SimBERT.from_pretrained(store["simbert"])
    hits = index.search(sim.encode(["银行卡密码怎么改"]), 3)[0]
    assert hits[0].text == "银行卡密码怎么改" and hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_chat_talks_with_a_run_artifact(store):
    from components.dialog import DialogueModel

    proc = cli("chat", "--model", f"runs:/{store['dialog_run']}/model", "--greedy", "--max-new-tokens", 6,
               store=store, stdin="你好\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    reply = DialogueModel.from_pretrained(store["dialog"]).chat(
        ["你好"], {"strategy": "greedy", "max_new_tokens": 6, "repetition_penalty": 1.0}).text
    assert proc.stdout.splitlines() == [f"bot> {reply}"]


@pytest.mark.parametrize("args, message", [
    (["chat", "--model", "models:/no-such-model/1"],
     "cannot download model 'models:/no-such-model/1': Registered Model with name=no-such-model not found"),
    (["chat", "--model", "models:/tiny-simbert@nobody"], "cannot resolve model 'models:/tiny-simbert@nobody'"),
    (["index", "--model", "runs:/0123456789abcdef/model", "--corpus", "pipelines/data/simbert_sample.jsonl",
      "--out", "/tmp/never"], "cannot download model 'runs:/0123456789abcdef/model'"),
    (["chat", "--model", "nosuch://bucket/model"], "no handler for this scheme"),
])
def test_bad_uris_end_with_one_line(store, args, message):
    proc = cli(*args, store=store, stdin="")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_tune_recipe_takes_a_uri(store, tmp_path):
    from pipelines.tune_recipe import check_paths, load_tune_recipe

    dev = tmp_path / "dev.jsonl"
    dev.write_text(json.dumps({"texts": GROUPS[0]}, ensure_ascii=False) + "\n", encoding="utf-8")
    recipe = load_tune_recipe(data={"name": "t", "workdir": str(tmp_path), "mode": "decoding",
                                    "model": "models:/tiny-simbert/1", "dev": {"file": str(dev)},
                                    "space": {"top_k": {"randint": [1, 5]}}})
    model_dir = check_paths(recipe)
    assert (model_dir / "model.safetensors").read_bytes() == (store["simbert"] / "model.safetensors").read_bytes()


def simbert_recipe(tmp_path: Path, name: str, init_from: str, steps: int):
    """A few SimBERT steps on the GROUPS corpus, starting from `init_from`."""
    from pipelines.recipe import load_recipe

    data = tmp_path / "groups.jsonl"
    data.write_text("".join(json.dumps({"texts": g}, ensure_ascii=False) + "\n" for g in GROUPS * 4),
                    encoding="utf-8")
    return load_recipe(data={
        "name": name, "workdir": str(tmp_path),
        "model": {"init_from": init_from},
        "data": {"train": [str(data)], "max_length": 32, "validation_fraction": 0.0},
        "task": {"name": "simbert"}, "optim": {"lr": 1e-3, "batch_size": 8},
        "schedule": {"max_steps": steps, "warmup_steps": 1, "log_every": 1},
        "checkpoint": {"every_steps": 0},
        # The module's experiment keeps artifacts under tmp (a new one would default to ./mlruns).
        "tracking": {"experiment": "uris", "registered_model": None}})


def test_init_from_a_relative_directory_reaches_the_workers_absolute(store, tmp_path, monkeypatch):
    """`--set model.init_from=runs/x/model` as users type it: relative to the command's directory,
    which is not the Ray Train workers' own; the workers get the absolute directory, MLflow and
    recipe.yaml keep what the user wrote. (Training from an init model runs in the alias test.)"""
    from pipelines.train import TrainingJob

    monkeypatch.chdir(store["simbert"].parent)
    job = TrainingJob(simbert_recipe(tmp_path, "from-relative", store["simbert"].name, steps=2), None, False)
    assert job.written.model.init_from == store["simbert"].name
    given = Path(job.worker_recipe.model.init_from)
    assert given.is_absolute() and given == store["simbert"].resolve()
    monkeypatch.chdir(tmp_path)                      # a worker's own directory
    assert Transformer.from_pretrained(given).config.hidden_size == 48   # the init model's


def test_init_from_a_registered_alias_trains(ray_session, store, tmp_path):
    import mlflow

    from pipelines.train import run_training

    result = run_training(simbert_recipe(tmp_path, "from-alias", "models:/tiny-simbert@champion", steps=3),
                          progress=False)
    start = Transformer.from_pretrained(store["simbert"])
    trained = Transformer.from_pretrained(result.model_dir)
    assert trained.config.hidden_size == start.config.hidden_size == 48       # the registered architecture
    a, b = start.embeddings.word_embeddings.weight, trained.embeddings.word_embeddings.weight
    assert torch.nn.functional.cosine_similarity(a, b, dim=-1).mean() > 0.9    # started from its weights
    assert not torch.equal(a, b)
    assert any((store["root"] / "cache").iterdir())
    run = mlflow.get_run(result.mlflow_run_id)
    assert run.data.params["model.init_from"] == "models:/tiny-simbert@champion"
    assert "| started from | `models:/tiny-simbert@champion` |" in (result.model_dir / "README.md").read_text()
