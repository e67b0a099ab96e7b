"""File parsing, bad-row reporting, the hash split and vocabulary building."""

import json

import pytest

from pipelines.corpora import sentiment_rows
from pipelines.data import DataError, check_files, parse_file, split_key
from pipelines.tasks import get_task


def test_parse_file_reports_line_numbers(tmp_path):
    path = str(tmp_path / "d.jsonl")
    data = "\n".join(['{"text": "好"}', "not json", "", "[1, 2]", '{"text": 5}', '{"txt": "a"}']).encode()
    rows = parse_file(path, data)
    task = get_task("mlm")()
    errors = {r["source"]: r["error"] or task.check_row(json.loads(r["record"])) for r in rows}
    assert errors == {f"{path}:1": None, f"{path}:2": "not valid JSON", f"{path}:4": "a row must be a JSON object",
                      f"{path}:5": "field 'text' must be a string, got int", f"{path}:6": "missing field 'text'"}


def test_check_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        check_files([str(tmp_path / "none.jsonl")])
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(DataError, match="unknown format"):
        check_files([str(tmp_path / "a.csv")])


def test_split_key_is_a_function_of_the_text():
    assert split_key("同一句话", 0) == split_key("同一句话", 0)
    keys = [split_key(f"句子{i}", 0) for i in range(2000)]
    assert 0.07 < sum(k < 0.1 for k in keys) / 2000 < 0.13


def test_sentiment_corpus_is_clean():
    rows = sentiment_rows()
    texts = [r["text"] for r in rows]
    assert len(texts) == len(set(texts)) > 15000
    assert {r["label"] for r in rows} == {"pos", "neg"}
