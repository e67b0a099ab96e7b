"""The plain Parser behind /v1/parse, called directly: stored settings written before `mart` named
the authors' MART keep their trees, with a warning; current settings and requests get the authors'."""

import json
import logging

from components.probing.constituency import mart, mart_block_means
from serving.parser import Parser

WORDS = ["hello", "world", "playing", "bert", "test"]


def _store(model_dir, settings):
    path = model_dir / "bert4ray.json"
    meta = json.loads(path.read_text()) if path.is_file() else {}
    meta["perturbed_masking"] = settings
    path.write_text(json.dumps(meta))


def test_settings_saved_before_the_authors_mart_keep_their_trees(tiny_model_dir, caplog):
    model_dir = tiny_model_dir(seed=5, initializer_range=0.3)
    F = Parser(model_dir).prober.parse([WORDS], None, None, keep_matrix=True)[0].matrix
    assert mart(F) != mart_block_means(F)                     # the two decoders tell apart on this input
    old = {"layer": -1, "distance": "euclidean", "subword": "first", "threshold": None,
           "dependency": "eisner", "constituency": "mart"}
    _store(model_dir, old)
    with caplog.at_level(logging.WARNING, logger="serving.parser"):
        parser = Parser(model_dir)
    assert "reading it as 'mart_block_means'" in caplog.text
    assert parser.settings["constituency"] == "mart_block_means"
    tree = parser.prober.parse([WORDS], None, parser.settings["constituency"])[0].tree
    assert tree == mart_block_means(F)
    # A request naming mart gets the authors' decoder whatever the stored default.
    assert parser.prober.parse([WORDS], None, "mart")[0].tree == mart(F)
    caplog.clear()
    _store(model_dir, {**old, "format": 2})
    with caplog.at_level(logging.WARNING, logger="serving.parser"):
        parser = Parser(model_dir)
    assert parser.settings["constituency"] == "mart" and not caplog.text
