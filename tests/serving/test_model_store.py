"""serving.model_store.resolve_model: a model directory, or an MLflow model URI (`runs:/`,
`models:/name/version`, `models:/name@alias`) resolved against a real (temporary SQLite) tracking
store to a directory that loads. No Serve needed."""

from __future__ import annotations

import pytest
import torch

from serving.model_store import resolve_model


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """A fresh SQLite tracking store (created once: about 7 s) with its artifacts in a temp dir; the
    process-wide tracking URI and the variable MLflow exports for subprocesses are restored after."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(utils, "_tracking_uri", None)               # None: MLflow reads the variable below
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        assert mlflow.get_tracking_uri() == uri
        yield mlflow.create_experiment("serving-model-store", artifact_location=(root / "mlartifacts").as_uri())


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_local_directory_resolves_to_itself_and_bad_paths_are_named(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir()
    assert resolve_model(str(model_dir)) == model_dir
    assert resolve_model(str(model_dir.parent)) == model_dir        # a folder holding one model directory
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_mlflow_runs_models_version_and_alias_uris_resolve_to_a_loadable_directory(
        tracking, tiny_model_dir, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from components.model import Transformer
    from components.tokenizer import Tokenizer

    def log_and_register(model_dir) -> str:
        with mlflow.start_run(experiment_id=tracking) as run:
            mlflow.log_artifacts(str(model_dir), artifact_path="model")
        # Plain artifacts are no MLflow "logged model": register them with the client API.
        version = client.create_model_version("tiny-chat", source=f"{run.info.artifact_uri}/model",
                                              run_id=run.info.run_id)
        return run.info.run_id, str(version.version)

    client = MlflowClient()
    client.create_registered_model("tiny-chat")
    first, second = tiny_model_dir("chat-v1"), tiny_model_dir("chat-v2", seed=1)
    run_id, version = log_and_register(first)
    assert version == "1"
    client.set_registered_model_alias("tiny-chat", "champion", "1")
    original = Transformer.from_pretrained(first)

    cache = tmp_path / "cache"
    resolved = {}
    for uri in (f"runs:/{run_id}/model", "models:/tiny-chat/1", "models:/tiny-chat@champion"):
        path = resolve_model(uri, cache_dir=cache)
        assert path.is_dir() and path.is_relative_to(cache), (uri, path)
        assert {"config.json", "model.safetensors", "vocab.txt", "bert4ray.json"} <= {p.name for p in path.iterdir()}
        assert same_weights(Transformer.from_pretrained(path), original), uri
        assert Tokenizer.from_pretrained(path).vocab_size == original.config.vocab_size
        resolved[uri] = path
    # The alias is pinned to the version it names: one download for both.
    assert resolved["models:/tiny-chat@champion"] == resolved["models:/tiny-chat/1"] != resolved[f"runs:/{run_id}/model"]

    # A second resolution is served from the cache: no download, same directory.
    marker = resolved["models:/tiny-chat/1"] / "cached.marker"
    marker.write_text("x")
    assert resolve_model("models:/tiny-chat@champion", cache_dir=cache) == marker.parent

    # Moving the alias (or registering a newer version for `latest`) moves the resolution with it.
    assert log_and_register(second)[1] == "2"
    client.set_registered_model_alias("tiny-chat", "champion", "2")
    newer = Transformer.from_pretrained(second)
    assert not same_weights(newer, original)
    for uri in ("models:/tiny-chat@champion", "models:/tiny-chat/latest"):
        assert same_weights(Transformer.from_pretrained(resolve_model(uri, cache_dir=cache)), newer), uri

    # Unknown versions, aliases and names are errors that name the reference.
    for bad in ("models:/tiny-chat/7", "models:/tiny-chat@nobody", "models:/no-such-model/1",
                "models:/no-such-model/latest", "runs:/0123456789abcdef/model"):
        with pytest.raises(ValueError, match=bad.replace("/", ".")):
            resolve_model(bad, cache_dir=cache)


def test_the_pyfunc_model_logged_by_training_resolves_too(tracking, tiny_model_dir, tmp_path):
    """pipelines.tracking logs the model directory inside a pyfunc model and registers it: the
    registered version resolves to the directory inside (artifacts/model_dir)."""
    import mlflow

    from components.model import Transformer
    from pipelines.tracking import log_pyfunc_model

    model_dir = tiny_model_dir("simbert-tiny")
    with mlflow.start_run(experiment_id=tracking):
        log_pyfunc_model(model_dir, "tiny-simbert")
    path = resolve_model("models:/tiny-simbert/1", cache_dir=tmp_path / "cache")
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert same_weights(Transformer.from_pretrained(path), Transformer.from_pretrained(model_dir))
