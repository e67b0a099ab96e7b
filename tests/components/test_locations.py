"""components.locations: local directories, registered schemes, and the atomic download cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from components import locations
from components.locations import Handler, pin_registry_uri, register_scheme, resolve_model


@pytest.fixture
def fake_scheme(tiny_model_dir):
    """`fake://NAME` copies a saved tiny model; `fake://broken` dies half-way through the copy;
    `fake://empty` writes files but no model. Counts fetches."""
    source = tiny_model_dir("source")
    calls = []

    def fetch(reference: str, dest: Path) -> None:
        calls.append(reference)
        name = reference.removeprefix("fake://")
        if name == "empty":
            (dest / "notes.txt").write_text("no model here")
            return
        shutil.copytree(source, dest / "model", dirs_exist_ok=True)
        if name.startswith("broken"):
            (dest / "model" / "model.safetensors").unlink()
            raise ConnectionError("connection reset after 3 of 5 files")

    register_scheme("fake://", Handler(fetch_fn=fetch, pin_fn=lambda ref: ref.replace("@latest", "@v3")))
    yield source, calls
    locations._HANDLERS.pop("fake://", None)


def test_local_directories_resolve_and_bad_paths_are_named(tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir()
    assert resolve_model(model_dir) == model_dir
    assert resolve_model(str(model_dir.parent)) == model_dir          # a folder holding one model
    with pytest.raises(FileNotFoundError, match="model directory '.*missing' does not exist"):
        resolve_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        resolve_model(tmp_path / "empty")


def test_a_registered_scheme_is_fetched_once_into_the_cache(fake_scheme, tmp_path):
    source, calls = fake_scheme
    cache = tmp_path / "cache"
    path = resolve_model("fake://tiny@latest", cache_dir=cache)
    assert path.is_relative_to(cache) and (path / "model.safetensors").read_bytes() == (
        source / "model.safetensors").read_bytes()
    assert calls == ["fake://tiny@v3"]                     # the handler gets the pinned reference
    assert resolve_model("fake://tiny@v3", cache_dir=cache) == path
    assert calls == ["fake://tiny@v3"]                     # same pinned reference: served from the cache
    assert [p.name for p in cache.iterdir()] == [path.parent.name]


def test_a_failed_download_leaves_nothing_usable(fake_scheme, tmp_path):
    _, calls = fake_scheme
    cache = tmp_path / "cache"
    for _ in range(2):                                     # tried again, not taken from a half-download
        with pytest.raises(ValueError, match="cannot download model 'fake://broken': connection reset"):
            resolve_model("fake://broken", cache_dir=cache)
    assert calls == ["fake://broken", "fake://broken"]
    assert list(cache.iterdir()) == []                     # no partial directory left behind
    with pytest.raises(ValueError, match="'fake://empty' holds no model directory"):
        resolve_model("fake://empty", cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_unknown_schemes_and_bad_prefixes_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"model 'nosuch://bucket/m': no handler for this scheme \(registered:"):
        resolve_model("nosuch://bucket/m", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="must look like"):
        register_scheme("models", Handler(fetch_fn=lambda r, d: None))
    assert not locations.is_uri("C:/models/x") and locations.is_uri("gs://b/x")


def test_registry_references_are_pinned_to_the_version_they_name():
    aliases = {("simbert", "champion"): "4"}
    newest = {"simbert": "7", "empty": None}
    pin = lambda ref: pin_registry_uri(ref, lambda n, a: aliases[(n, a)], newest.get)  # noqa: E731
    assert pin("models:/simbert@champion") == "models:/simbert/4"
    assert pin("models:/simbert@champion/sub/dir") == "models:/simbert/4/sub/dir"
    assert pin("models:/simbert/latest") == "models:/simbert/7"
    assert pin("models:/simbert/2") == "models:/simbert/2"
    assert pin("runs:/abc/model") == "runs:/abc/model"
    with pytest.raises(ValueError, match="'empty' has no versions"):
        pin("models:/empty/latest")
