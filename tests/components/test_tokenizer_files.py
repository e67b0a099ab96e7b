"""Hugging Face tokenizer files in every model directory: `AutoTokenizer` and `BertTokenizerFast`
load them to bert4ray's ids and truncate at the model's max_position_embeddings, for new
directories and for older ones (vocab.txt + a bare tokenizer_config.json) once re-saved."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoTokenizer, BertTokenizerFast

from components.model import Transformer
from components.tokenizer import Tokenizer

POSITIONS = 24
SINGLE = [
    "今天天气很好，我们去北京玩吧！",
    "Hello World, playing tests 1234? 怎么修改银行卡密码😀 bert4ray",
    "龘靐齉 unknown ξ characters",                 # not in the vocabulary: [UNK]
    "这是[MASK]和[SEP]",                           # special tokens written in the text
    "很好" * 40,                                    # longer than the model's positions
    "",
]
PAIRS = [("今天天气很好", "明天呢？Hello world"), ("我的快递还没到" * 5, "快递怎么还没到" * 4)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, vocab_file):
    from tests.conftest import tiny_config
    out = tmp_path_factory.mktemp("tok") / "model"
    cfg = tiny_config(Tokenizer(vocab_file).vocab_size, max_position_embeddings=POSITIONS)
    Transformer(cfg).save_pretrained(out, metadata={"vocab_file": str(vocab_file)})
    return out


def assert_parity(directory, reference) -> None:
    ours = Tokenizer.from_pretrained(directory)
    assert reference.model_max_length == POSITIONS
    for text in SINGLE:
        got = reference(text, truncation=True)
        ids, seg = ours.encode(text)
        assert got["input_ids"] == ids and got["token_type_ids"] == seg, text
        assert len(got["input_ids"]) <= POSITIONS
    for a, b in PAIRS:
        got = reference(a, b, truncation=True)
        ids, seg = ours.encode(a, b)
        assert got["input_ids"] == ids and got["token_type_ids"] == seg, (a, b)
    assert len(reference(SINGLE[4], truncation=True)["input_ids"]) == POSITIONS
    assert reference.convert_ids_to_tokens(reference(SINGLE[2])["input_ids"]).count("[UNK]") >= 3


def test_a_saved_model_directory_has_the_hugging_face_tokenizer_files(model_dir):
    names = {p.name for p in model_dir.iterdir()}
    assert {"vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= names
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == POSITIONS and config["tokenizer_class"] == "BertTokenizer"
    assert config["do_lower_case"] is True
    assert {config[k] for k in ("cls_token", "sep_token", "pad_token", "unk_token", "mask_token")} == {
        "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]"}
    assert json.loads((model_dir / "special_tokens_map.json").read_text())["mask_token"] == "[MASK]"


@pytest.mark.parametrize("loader", [AutoTokenizer, BertTokenizerFast], ids=["AutoTokenizer", "BertTokenizerFast"])
def test_transformers_tokenizers_give_bert4rays_ids_and_cut_at_the_positions(model_dir, loader):
    assert_parity(model_dir, loader.from_pretrained(str(model_dir)))


def test_an_older_directory_gets_the_files_when_it_is_re_saved(model_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    for name in ("tokenizer.json", "special_tokens_map.json"):
        (old / name).unlink()
    (old / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "tokenizer_class": "BertTokenizer"}))
    assert AutoTokenizer.from_pretrained(str(old)).model_max_length > 1e20      # what users got before
    Transformer.from_pretrained(old).save_pretrained(old)
    assert_parity(old, AutoTokenizer.from_pretrained(str(old)))


def test_casing_is_kept_on_re_save(model_dir, tmp_path):
    cased = tmp_path / "cased"
    shutil.copytree(model_dir, cased)
    (cased / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    Transformer.from_pretrained(cased).save_pretrained(cased)
    assert json.loads((cased / "tokenizer_config.json").read_text())["do_lower_case"] is False
    reference = AutoTokenizer.from_pretrained(str(cased))
    ours = Tokenizer.from_pretrained(cased)
    assert not ours.lowercase
    assert reference("Hello hello")["input_ids"] == ours.encode("Hello hello")[0]
