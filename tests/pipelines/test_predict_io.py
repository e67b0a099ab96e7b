"""`bert4ray predict` without Ray: finding inputs, cutting files into chunks on row boundaries,
reading rows back with their ids, checks before the job, settings and the OUT manifest."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import predict_io as pio
from pipelines.predict import PredictJob, load_settings, prepare


def rows_of(f: pio.InputFile) -> list[tuple[int, dict | None, str | None]]:
    return [r for chunk in f.chunks for r in pio.chunk_rows(chunk)]


def test_find_inputs_directory_glob_and_names(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name in ("a.jsonl", "a.csv", "sub/b.parquet", "notes.txt", ".hidden.jsonl", "_x/c.jsonl"):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_text("")
    (tmp_path / "in" / "out").mkdir()
    (tmp_path / "in" / "out" / "old.parquet").write_text("")          # OUT inside IN is never input
    found = pio.find_inputs(str(tmp_path / "in"), tmp_path / "in" / "out")
    assert [(f.fmt, f.name) for f in found] == [("csv", "a.csv.parquet"), ("jsonl", "a.jsonl.parquet"),
                                                ("parquet", "sub/b.parquet")]
    globbed = pio.find_inputs(str(tmp_path / "in" / "**" / "*.parquet"), tmp_path / "in" / "out")
    assert [f.name for f in globbed] == ["sub/b.parquet"]
    assert [f.name for f in pio.find_inputs(str(tmp_path / "in" / "?.csv"), tmp_path / "o")] == ["a.parquet"]
    assert [f.name for f in pio.find_inputs(str(tmp_path / "in" / "a.csv"), tmp_path / "o")] == ["a.parquet"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pio.find_inputs(str(tmp_path / "nope.jsonl"), tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="no input file matches"):
        pio.find_inputs(str(tmp_path / "*.nothing"), tmp_path / "o")
    with pytest.raises(ValueError, match="inputs are JSON Lines"):
        pio.find_inputs(str(tmp_path / "in" / "notes.txt"), tmp_path / "o")


def test_jsonl_chunks_keep_line_numbers(tmp_path):
    path = tmp_path / "x.jsonl"
    lines = []
    for i in range(1, 60):
        lines.append("" if i % 7 == 0 else ("{oops" if i == 20 else json.dumps({"text": f"行{i}", "i": i})))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    f = pio.find_inputs(str(path), tmp_path / "o")[0]
    pio.inspect(f, "text", ["embedding"])
    pio.plan(f, 0, "text", ["embedding"], chunk_bytes=64)               # many small chunks
    assert len(f.chunks) > 5
    got = rows_of(f)
    assert f.rows == len(got) == 59 - 59 // 7
    assert [r for r, _, _ in got] == [i for i in range(1, 60) if i % 7]
    assert all(rec["i"] == r for r, rec, err in got if err is None)
    assert [(r, err) for r, _, err in got if err] == [(20, "not valid JSON (Expecting property name enclosed "
                                                          "in double quotes)")]


def test_csv_chunks_respect_quoted_newlines(tmp_path):
    path = tmp_path / "x.csv"
    body = ['id,text'] + [f'{i},"line {i}\nsecond ""part"", {i}"' if i % 3 == 0 else f"{i},plain {i}"
                          for i in range(1, 40)]
    body.insert(10, "")                                                   # a blank line is skipped
    body.append("40,too,many")
    path.write_text("\r\n".join(body) + "\r\n", encoding="utf-8")
    f = pio.find_inputs(str(path), tmp_path / "o")[0]
    pio.inspect(f, "text", ["embedding"])
    pio.plan(f, 0, "text", ["embedding"], chunk_bytes=40)
    got = rows_of(f)
    assert f.rows == len(got) == 40 and [r for r, _, _ in got] == list(range(1, 41))
    assert got[2][1] == {"id": "3", "text": 'line 3\nsecond "part", 3'}
    assert got[-1] == (40, None, "3 fields where the header has 2")
    table = pio.input_table(f)
    assert table.column_names == ["id", "text"] and table.num_rows == 40 and table["id"][38].as_py() == "39"


def test_read_chunk_rows_and_errors(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join([json.dumps({"text": "好"}), json.dumps({"id": 2}), json.dumps({"text": ["a", "b"]}),
                               "[1, 2]", json.dumps({"text": "x", "embedding": 1})]) + "\n", encoding="utf-8")
    f = pio.find_inputs(str(path), tmp_path / "o")[0]
    pio.plan(f, 3, "text", ["embedding"])
    table = pio.read_chunk(pa.table({"chunk": [json.dumps(c) for c in f.chunks]}))
    assert table["_file"].to_pylist() == [3] * 5 and table["_row"].to_pylist() == [1, 2, 3, 4, 5]
    assert table["_value"].to_pylist() == ['"好"', None, '["a", "b"]', None, None]
    errors = table["_error"].to_pylist()
    assert errors[:3] == [None, None, None] and errors[3] == "not a JSON object (list)"
    assert "would be overwritten" in errors[4]


def test_jsonl_columns_of_mixed_types_become_json_text():
    table = pio.records_to_table([{"a": 1, "b": "x"}, None, {"a": "one", "c": [1, 2]}], ["a", "b", "c"])
    assert table["a"].to_pylist() == ["1", None, '"one"'] and table["b"].to_pylist() == ["x", None, None]
    merged = pio.unify([pa.table({"a": [1]}), pa.table({"a": ["x"], "b": [2.0]})])
    assert merged["a"].to_pylist() == ["1", '"x"'] and merged["b"].to_pylist() == [None, 2.0]


def test_checks_before_the_job(tmp_path, tiny_model_dir):
    model = tiny_model_dir()
    bad_parquet = tmp_path / "bad.parquet"
    bad_parquet.write_bytes(b"not parquet")
    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "nocol.parquet")
    (tmp_path / "arr.jsonl").write_text("[1, 2]\n")
    (tmp_path / "ok.jsonl").write_text(json.dumps({"text": "好", "embedding": 1}) + "\n")
    cases = [(bad_parquet, "unreadable Parquet"), (tmp_path / "nocol.parquet", "no column 'text'"),
             (tmp_path / "arr.jsonl", "not JSON Lines of objects"), (tmp_path / "ok.jsonl", "use --prefix|with --prefix")]
    for path, message in cases:
        with pytest.raises(ValueError, match=message):
            prepare(PredictJob("embed", str(model), str(path), str(tmp_path / "out")))
    with pytest.raises(ValueError, match="classify needs a model trained with the classify task"):
        prepare(PredictJob("classify", str(model), str(tmp_path / "ok.jsonl"), str(tmp_path / "out")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        prepare(PredictJob("embed", str(tmp_path / "empty"), str(tmp_path / "ok.jsonl"), str(tmp_path / "out")))


def test_settings_are_checked_per_kind():
    assert load_settings("similar", ["decoding.top_k=3", "similar.n=4"]) == {
        "decoding": {"top_k": 3}, "n": 4, "k": 5, "max_length": 64}
    assert load_settings("embed", []) == {}
    with pytest.raises(ValueError, match="'decoding' settings do not apply to embed"):
        load_settings("embed", ["decoding.top_k=3"])
    with pytest.raises(ValueError, match="did you mean 'decoding.top_p'"):
        load_settings("similar", ["decoding.top_pp=0.5"])
    with pytest.raises(ValueError, match="top_p must be in"):
        load_settings("reply", ["decoding.top_p=2"])
    with pytest.raises(ValueError, match="probe.dependency must be one of"):
        load_settings("parse", ["probe.dependency=cky"])
    with pytest.raises(ValueError, match="attribute.rule must be one of"):
        load_settings("attribute", ["attribute.rule=simpson"])


def test_output_directory_remembers_what_it_holds(tmp_path, tiny_model_dir):
    model = tiny_model_dir()
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": "好"}) + "\n")
    out = tmp_path / "out"
    plan = prepare(PredictJob("segment", str(model), str(corpus), str(out)))
    assert [f.name for f in plan.todo] == ["c.parquet"] and plan.todo[0].rows == 1
    prepare(PredictJob("segment", str(model), str(corpus), str(out)))          # the same job: fine
    (tmp_path / "empty.jsonl").write_text("\n")
    assert prepare(PredictJob("segment", str(model), str(tmp_path / "empty.jsonl"), str(out))).todo[0].rows == 0
    with pytest.raises(ValueError, match="holds predictions with another kind, settings"):
        prepare(PredictJob("parse", str(model), str(corpus), str(out), overrides=["probe.threshold=0.5"]))
