"""`bert4ray export MODEL --format sentence-transformers OUT`: SentenceTransformer(OUT).encode equals
SimBERT.encode (linear and tanh poolers, texts longer than the 64-token cut), and mistakes end
with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from components.simbert import SimBERT
from pipelines.cli import main
from tests.tiny_training import train_tiny_simbert

TEXTS = ["怎么修改银行卡密码", "银行卡密码怎么改", "Hello World, playing tests 1234? 😀", "龘靐齉 ξ",
         "我的快递还没到怎么办" * 12, "", "这是[MASK]和[SEP]"]


@pytest.fixture(scope="module")
def simbert_dir(tmp_path_factory, vocab_file):
    return train_tiny_simbert(tmp_path_factory.mktemp("export") / "simbert", vocab_file, steps=20)


def export(model_dir, out, capsys) -> None:
    assert main(["export", str(model_dir), "--format", "sentence-transformers", str(out)]) == 0
    assert str(out) in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["simbert-linear-pooler", "bert-tanh-pooler-128-positions"])
def test_sentence_transformers_encodes_as_simbert(kind, simbert_dir, tiny_model_dir, tmp_path, capsys):
    model_dir = simbert_dir if kind.startswith("simbert") else tiny_model_dir("bert", initializer_range=0.2)
    out = tmp_path / "st"
    export(model_dir, out, capsys)
    st = SentenceTransformer(str(out), device="cpu")
    assert st.max_seq_length == 64
    got = st.encode(TEXTS, batch_size=3)
    expected = SimBERT.from_pretrained(model_dir).encode(TEXTS)
    delta = float(np.abs(got - expected).max())
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert delta < 1e-5
    modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((out / "modules.json").read_text())]
    assert modules == ["Transformer", "Pooling", "Dense", "Normalize"]
    # Exporting again replaces the earlier export.
    export(model_dir, out, capsys)


def test_mistakes_end_with_one_line(simbert_dir, tiny_model_dir, tmp_path, capsys):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    linear = tiny_model_dir("linear", attention="linear")
    cases = [
        ([str(simbert_dir), str(simbert_dir)], "would replace the model itself"),
        ([str(simbert_dir), str(tmp_path / "precious")], "is not an earlier sentence-transformers export"),
        ([str(linear), str(tmp_path / "x")], "uses linear attention"),
        ([str(tmp_path / "missing"), str(tmp_path / "y")], "does not exist"),
    ]
    for args, message in cases:
        assert main(["export", args[0], "--format", "sentence-transformers", args[1]]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"
