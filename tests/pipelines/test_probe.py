"""`bert4ray probe`: the recipe, the corpus readers, and a real Ray Data run on a tiny model whose
outputs equal the components' and whose scores reach MLflow."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from pipelines.probe import load_probe_recipe, parse_corpus_file
from pipelines.recipe import RecipeError

pytestmark = pytest.mark.timeout(600)

CONLLU = """# text = 我 在 银行
1\t我\t_\tPRON\t_\t_\t3\tnsubj\t_\t_
2\t在\t_\tADP\t_\t_\t3\tcase\t_\t_
3\t银行\t_\tNOUN\t_\t_\t0\troot\t_\t_
4\t。\t_\tPUNCT\t_\t_\t3\tpunct\t_\t_

1\t修改\t_\tVERB\t_\t_\t0\troot\t_\t_
2\t密码\t_\tNOUN\t_\t_\t1\tobj\t_\t_
"""
TREES = "(IP (NP (PN 我)) (VP (PP (P 在) (NP (NN 银行))) (VP (VV 修改) (NN 密码))))\n(IP (VV 你好) (PU ！))\n"
ROWS = [{"text": "我在银行修改密码", "words": ["我", "在", "银行", "修改", "密码"]},
        {"text": "怎么修改银行卡密码？", "words": ["怎么", "修改", "银行卡", "密码", "？"]},
        {"words": ["你好", "，", "北京"]},
        {"text": "今天天气很好"}]


def test_recipe_defaults_overrides_and_errors(tmp_path):
    r = load_probe_recipe(data={"model": {"path": "m"}, "data": {"files": ["a.jsonl"]}})
    assert r.probe.layer == -1 and r.probe.threshold == "otsu" and r.probe.tasks == ["segment", "dependency",
                                                                                      "constituency"]
    r = load_probe_recipe(data={"model": {"path": "m"}, "data": {"source": "peoples-daily"}},
                          overrides=["probe.layer=1", "probe.threshold=7.5", "probe.tasks=[segment]",
                                     "data.split=validation"])
    assert (r.probe.layer, r.probe.threshold, r.probe.tasks, r.data.split) == (1, 7.5, ["segment"], "validation")
    base = {"model": {"path": "m"}, "data": {"files": ["a.jsonl"]}}
    for overrides, message in [
        (["probe.layr=1"], "did you mean 'probe.layer'"),
        (["probe.distance=manhattan"], "probe.distance"),
        (["probe.subword=sum"], "valid: first, avg, max"),
        (["probe.threshold=median"], "probe.threshold"),
        (["probe.tasks=[pos]"], "unknown task 'pos'"),
        (["probe.layer=0"], "probe.layer"),
        (["probe.layer=last"], "probe.layer"),
        (["compute.actors=0"], "compute.actors"),
        (["data.split=dev"], "data.split"),
        (["model.path="], "model.path"),
    ]:
        with pytest.raises(RecipeError, match=message):
            load_probe_recipe(data=base, overrides=overrides)
    with pytest.raises(RecipeError, match="data.files"):
        load_probe_recipe(data={"model": {"path": "m"}})


def test_constituency_choices_are_the_components_decoders():
    from components.probing.constituency import ALGORITHMS
    from pipelines.probe_recipe import ProbeSection
    field = next(f for f in dataclasses.fields(ProbeSection) if f.name == "constituency")
    assert field.metadata["choices"] == ALGORITHMS
    base = {"model": {"path": "m"}, "data": {"files": ["a.jsonl"]}}
    assert load_probe_recipe(data=base).probe.constituency == "mart"             # the authors' MART
    assert load_probe_recipe(data=base, overrides=["probe.constituency=mart_block_means"]).probe.constituency \
        == "mart_block_means"
    with pytest.raises(RecipeError, match="valid: mart, mart_block_means, seed"):
        load_probe_recipe(data=base, overrides=["probe.constituency=cky"])


def test_corpus_readers(tmp_path):
    rows = parse_corpus_file("x.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS).encode())
    recs = [json.loads(r["record"]) for r in rows]
    assert recs[0] == {"text": "我在银行修改密码", "gold_words": ROWS[0]["words"]}
    assert recs[2]["text"] == "你好，北京" and recs[3] == {"text": "今天天气很好"}
    dep = [json.loads(r["record"]) for r in parse_corpus_file("d.conllu", CONLLU.encode())]
    assert dep[0]["tokens"] == ["我", "在", "银行", "。"] and dep[0]["gold_heads"] == [3, 3, 0, 3]
    con = [json.loads(r["record"]) for r in parse_corpus_file("t.mrg", TREES.encode())]
    assert con[0]["tokens"] == ["我", "在", "银行", "修改", "密码"]
    assert {tuple(s) for s in con[0]["gold_spans"]} == {(1, 3), (1, 5), (3, 5), (0, 5)}
    with pytest.raises(ValueError, match="do not spell the text"):
        parse_corpus_file("x.jsonl", json.dumps({"text": "abc", "words": ["a", "b"]}).encode())
    with pytest.raises(ValueError, match="no 'text'"):
        parse_corpus_file("x.jsonl", b'{"label": 1}\n')
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_corpus_file("x.jsonl", b'{"text": \n')


@pytest.fixture(scope="module")
def probe_setup(tmp_path_factory, vocab_file):
    from components.model import Transformer
    from components.tokenizer import Tokenizer
    from tests.conftest import tiny_config
    root = tmp_path_factory.mktemp("probe")
    torch.manual_seed(2)
    Transformer(tiny_config(Tokenizer(vocab_file).vocab_size, initializer_range=0.3)).save_pretrained(
        root / "model", metadata={"vocab_file": str(vocab_file), "task": "mlm"})
    (root / "c.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS), encoding="utf-8")
    (root / "d.conllu").write_text(CONLLU, encoding="utf-8")
    (root / "t.mrg").write_text(TREES, encoding="utf-8")
    return root


def test_probe_run_equals_the_components(ray_session, probe_setup, tmp_path):
    import mlflow
    import pyarrow.parquet as pq

    from components.probing.constituency import to_brackets
    from components.probing.prober import Prober
    from components.probing.segment import choose_threshold, segment
    from pipelines.probe import run_probe

    root = probe_setup
    recipe = load_probe_recipe(data={
        "name": "t", "workdir": str(tmp_path), "model": {"path": str(root / "model")},
        "data": {"files": [str(root / "c.jsonl"), str(root / "d.conllu"), str(root / "t.mrg")]},
        "probe": {"token_budget": 64}, "compute": {"batch_size": 3}, "output": {"save_to_model": True}})
    result = run_probe(recipe, progress=False)
    table = pq.read_table(result.output_dir).to_pylist()
    assert len(table) == result.rows == 4 + 2 + 2
    by_id = {r["id"]: r for r in table}
    assert set(table[0]) == {"id", "text", "words", "tokens", "heads", "tree", "note"}

    # The same computation straight from the components, one call for everything.
    prober = Prober.from_pretrained(root / "model", token_budget=64)
    texts = [r["text"] for r in table]
    scored = prober.char_scores(texts)
    t = choose_threshold(np.concatenate([s for _, s in scored]), "otsu")
    assert result.threshold == pytest.approx(t, rel=1e-6)
    for row, (chars, scores) in zip(table, scored):
        assert row["words"] == segment(chars, scores, result.threshold)
    for rid, row in by_id.items():
        parsed = prober.parse([row["tokens"]])[0]
        assert row["heads"] == parsed.heads, rid
        assert row["tree"] == to_brackets(parsed.tree, parsed.units)
    assert by_id["d.conllu#1"]["tokens"] == ["我", "在", "银行", "。"]           # gold tokens are parsed as given

    m = result.metrics
    for key in ("seg_f1", "seg_precision", "seg_recall", "seg_single_char_f1", "seg_random_f1", "seg_oracle_f1",
                "dep_uas", "dep_uuas", "con_sentence_f1", "con_corpus_f1"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["seg_oracle_f1"] >= m["seg_f1"] - 1e-9
    assert result.mlflow_run_id
    run = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(result.mlflow_run_id)
    assert run.data.metrics["seg_f1"] == pytest.approx(m["seg_f1"])
    assert run.data.params["probe.distance"] == "euclidean"
    saved = json.loads((root / "model" / "bert4ray.json").read_text())["perturbed_masking"]
    assert saved["threshold"] == pytest.approx(result.threshold) and saved["layer"] == -1
    assert saved["format"] == 2 and saved["constituency"] == "mart"              # read back as the authors' MART


def test_probe_gold_root_and_errors(ray_session, probe_setup, tmp_path):
    from pipelines.probe import run_probe
    root = probe_setup
    recipe = load_probe_recipe(data={
        "name": "g", "workdir": str(tmp_path), "model": {"path": str(root / "model")},
        "data": {"files": [str(root / "d.conllu")]}, "tracking": {"enabled": False},
        "probe": {"tasks": ["dependency"], "root": "gold", "dependency": "chu_liu_edmonds"}})
    result = run_probe(recipe, progress=False)
    assert result.metrics["dep_sentences"] == 2 and result.mlflow_run_id is None
    # The gold root gets the root arc, so those words are right at least.
    assert result.metrics["dep_uas"] >= 2 / 6
    bad = load_probe_recipe(data={**recipe_dict(recipe), "data": {"files": [str(root / "c.jsonl")]}})
    with pytest.raises(ValueError, match="4 of 4 rows have no gold heads"):
        run_probe(bad, progress=False)
    with pytest.raises(ValueError, match="has 2 layers"):
        run_probe(load_probe_recipe(data=recipe_dict(recipe), overrides=["probe.layer=5"]), progress=False)


def recipe_dict(recipe):
    from pipelines.recipe import to_dict
    return to_dict(recipe)


def test_cli_reports_recipe_errors_in_one_line(tmp_path, capsys):
    from pipelines.cli import main
    bad = tmp_path / "p.yaml"
    bad.write_text("model: {path: m}\ndata: {files: [a.jsonl]}\nprobe: {subwrd: max}\n", encoding="utf-8")
    assert main(["probe", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bert4ray probe: error: unknown recipe key 'probe.subwrd'; did you mean 'probe.subword'?" in err
    assert main(["probe", str(bad), "--set", "probe.subwrd=avg"]) == 2
    assert main(["probe", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_rows_are_spread_over_the_actors(ray_session):
    """A corpus of one file is one block; the probe cuts it into about one block per batch so that
    every actor gets work."""
    import ray

    from pipelines.probe import spread_rows

    one_block = ray.data.from_items([{"id": str(k)} for k in range(10)], override_num_blocks=1).materialize()
    assert one_block.num_blocks() == 1
    spread = spread_rows(one_block, 10, actors=2, batch_size=3)
    assert spread.num_blocks() == 4
    assert sorted(r["id"] for r in spread.iter_rows()) == sorted(str(k) for k in range(10))
    assert spread_rows(one_block, 10, actors=2, batch_size=32).num_blocks() == 2      # at least one per actor
    single = ray.data.from_items([{"id": "0"}]).materialize()
    assert spread_rows(single, 1, actors=2, batch_size=32).num_blocks() == 1
