"""Tokenizer parity with transformers.BertTokenizerFast, pairs, batches and decoding."""

import pytest
from transformers import BertTokenizerFast

from components.tokenizer import Tokenizer

MIXED = [
    "今天天气很好，我们去北京玩吧！",
    "Hello World, playing tests 1234?",
    "怎么修改银行卡密码？hello world 12",
    "手机号码😀忘记了吗",
    "  多个   空格\t和\n换行  ",
    "ＡＢＣ全角，「引号」和 café",
    "bert4ray 的 playing 测试 (2026)",
    "",
]


@pytest.fixture(scope="module")
def reference(vocab_file):
    return BertTokenizerFast(str(vocab_file), do_lower_case=True)


@pytest.mark.parametrize("text", MIXED)
def test_ids_match_transformers(tokenizer, reference, text):
    ids, seg = tokenizer.encode(text)
    ref = reference(text)
    assert ids == ref["input_ids"]
    assert seg == ref["token_type_ids"]


def test_pairs_and_truncation_match_transformers(tokenizer, reference):
    a, b = "今天天气很好，我们去北京玩吧！", "明天呢？Hello world"
    ids, seg = tokenizer.encode(a, b)
    ref = reference(a, b)
    assert ids == ref["input_ids"] and seg == ref["token_type_ids"]
    ids, seg = tokenizer.encode(a, b, max_length=12)
    ref = reference(a, b, truncation="longest_first", max_length=12)
    assert ids == ref["input_ids"] and seg == ref["token_type_ids"]


def test_batch_padding(tokenizer):
    batch = tokenizer.encode_batch(["你好", "今天天气很好"], pairs=["好", "是的"])
    assert batch.input_ids.shape == batch.attention_mask.shape == batch.segment_ids.shape
    lengths = batch.attention_mask.sum(1).tolist()
    assert lengths == [6, 11]
    assert batch.input_ids[0, 6:].eq(tokenizer.pad_id).all()
    assert batch.segment_ids[0].tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0]
    with pytest.raises(ValueError, match="2 texts but 1 pairs"):
        tokenizer.encode_batch(["a", "b"], pairs=["c"])


def test_decode_joins_chinese_without_spaces(tokenizer):
    ids, _ = tokenizer.encode("今天天气很好，hello world playing 1234！我们")
    assert tokenizer.decode(ids) == "今天天气很好，hello world playing 1234！我们"


def test_missing_vocab_or_special_tokens(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer(tmp_path / "nope.txt")
    (tmp_path / "v.txt").write_text("[PAD]\n[UNK]\n[CLS]\na\n")
    with pytest.raises(ValueError, match=r"\[SEP\], \[MASK\] missing"):
        Tokenizer(tmp_path / "v.txt")
