"""Real Ray Train + DeepSpeed runs on CPU (2 workers, ZeRO-2) with a tiny model on real text."""

import json
import subprocess
import sys

import pytest
import torch

from pipelines.corpora import peoples_daily_rows
from pipelines.recipe import load_recipe
from pipelines.train import run_training

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "pd.jsonl"
    rows = peoples_daily_rows()[:700]
    path.write_text("".join(json.dumps({"text": r["text"]}, ensure_ascii=False) + "\n" for r in rows)
                    + '{"text": 7}\n{"nope": "x"}\n', encoding="utf-8")
    return path


def tiny(corpus, workdir, *overrides):
    return load_recipe(data={
        "name": "t", "workdir": str(workdir),
        "model": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
                  "max_position_embeddings": 64, "vocab_max_size": 1500,
                  "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        "data": {"train": [str(corpus)], "max_length": 48, "validation_fraction": 0.1},
        "optim": {"lr": 3e-3, "batch_size": 16},
        "schedule": {"max_steps": 24, "warmup_steps": 2, "log_every": 4},
        "checkpoint": {"every_steps": 12}, "tracking": {"registered_model": "tiny-mlm"}},
        overrides=list(overrides))


def losses(result):
    return [h["loss"] for h in result.history if "loss" in h]


def test_mlm_trains_exports_and_tracks(ray_session, corpus, tmp_path):
    import mlflow
    from transformers import BertForMaskedLM

    from components.model import Transformer
    from components.tokenizer import Tokenizer

    result = run_training(tiny(corpus, tmp_path), progress=False)
    curve = losses(result)
    assert len(curve) == 6 and curve[-1] < curve[0] - 0.3, curve
    assert result.data_report.bad == 2 and result.data_report.train > 500
    assert "eval_mlm_loss" in result.metrics

    # The export loads in bert4ray and in transformers, with the same MLM logits.
    model = Transformer.from_pretrained(result.model_dir).eval()
    tok = Tokenizer.from_pretrained(result.model_dir)
    batch = tok.encode_batch(["人民日报社论", "新年讲话"])
    hf = BertForMaskedLM.from_pretrained(result.model_dir).eval()
    with torch.no_grad():
        ours = model(batch.input_ids, batch.segment_ids, batch.attention_mask).logits
        theirs = hf(input_ids=batch.input_ids, token_type_ids=batch.segment_ids,
                    attention_mask=batch.attention_mask).logits
    real = batch.attention_mask.bool()
    assert torch.allclose(ours[real], theirs[real], atol=1e-3)

    # MLflow: params, metric history, model artifact, registered model.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["bert4ray"], filter_string=f"run_id = '{result.mlflow_run_id}'")
    assert len(runs) == 1 and runs.iloc[0]["status"] == "FINISHED"
    assert runs.iloc[0]["params.optim.lr"] == "0.003" and runs.iloc[0]["params.data.bad_rows"] == "2"
    client = mlflow.tracking.MlflowClient()
    history = client.get_metric_history(result.mlflow_run_id, "loss")
    assert [m.step for m in history] == [4, 8, 12, 16, 20, 24]
    assert client.get_registered_model("tiny-mlm").name == "tiny-mlm"
    assert any(v.run_id == result.mlflow_run_id for v in client.search_model_versions("name='tiny-mlm'"))


@pytest.mark.slow             # 70-80 s: in the slow set, to keep the default suite under 15 min
def test_resume_continues_to_the_same_loss(ray_session, corpus, tmp_path):
    full = run_training(tiny(corpus, tmp_path / "a"), progress=False)
    first = run_training(tiny(corpus, tmp_path / "b", "checkpoint.stop_after=12"), progress=False)
    assert first.model_dir is None and first.history[-1]["step"] == 12
    resumed = run_training(tiny(corpus, tmp_path / "b"), resume=True, progress=False)
    assert [h["step"] for h in resumed.history if "loss" in h] == [16, 20, 24]
    assert losses(resumed)[-1] == pytest.approx(losses(full)[-1], rel=1e-4, abs=1e-4)
    assert resumed.metrics["eval_mlm_loss"] == pytest.approx(full.metrics["eval_mlm_loss"], rel=1e-4)


@pytest.mark.slow             # 40-47 s of Ray Train: in the slow set, to keep the default suite under 15 min
def test_linear_attention_trains(ray_session, corpus, tmp_path):
    # Also: a run with no validation split at all trains and exports.
    result = run_training(tiny(corpus, tmp_path, "model.attention=linear", "data.validation_fraction=0.0"),
                          progress=False)
    assert result.data_report.validation == 0 and not any(k.startswith("eval_") for k in result.metrics)
    curve = losses(result)
    assert curve[-1] < curve[0] - 0.3, curve
    assert json.loads((result.model_dir / "bert4ray.json").read_text())["model"]["attention"] == "linear"


@pytest.mark.parametrize("args, message", [
    (["--set", "optim.lrr=1"], "unknown recipe key 'optim.lrr'; did you mean 'optim.lr'?"),
    (["--set", "data.train=/nonexistent/x.jsonl", "--set", "data.source=files"],
     "data file '/nonexistent/x.jsonl' does not exist"),
])
def test_cli_errors_are_one_line(args, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipelines", "train", "pipelines/recipes/mlm-tiny.yaml",
                           "--set", f"workdir={tmp_path}", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_simbert_trains_both_loss_parts_on_the_bundled_corpus(ray_session, tmp_path):
    from importlib import resources

    from components.simbert import SimBERT
    source = resources.files("pipelines").joinpath("data/simbert_sample.jsonl").read_text(encoding="utf-8")
    data = tmp_path / "groups.jsonl"
    data.write_text("\n".join(source.splitlines()[:240]) + "\n", encoding="utf-8")
    recipe = load_recipe(data={
        "name": "s", "workdir": str(tmp_path),
        "model": {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96,
                  "max_position_embeddings": 64, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
        "data": {"train": [str(data)], "max_length": 48, "validation_fraction": 0.1},
        "task": {"name": "simbert"},
        "optim": {"lr": 3e-3, "batch_size": 16},
        "schedule": {"max_steps": 30, "warmup_steps": 3, "log_every": 5, "epochs": 10},
        "checkpoint": {"every_steps": 0}, "tracking": {"registered_model": "tiny-simbert"}})
    result = run_training(recipe, progress=False)
    steps = [h for h in result.history if "seq2seq" in h and "loss" in h]
    assert len(steps) == 6
    curves = {part: [h[part] for h in steps] for part in ("seq2seq", "contrastive")}
    assert curves["seq2seq"][-1] < curves["seq2seq"][0] - 0.5, curves
    assert curves["contrastive"][-1] < 0.8 * curves["contrastive"][0], curves
    assert result.metrics["eval_top1"] > result.metrics["eval_top1_chance"]
    # The model card states this run's figures and data.
    card = (result.model_dir / "README.md").read_text(encoding="utf-8")
    assert f"| top1 | {result.metrics['eval_top1']:.4g} |" in card
    assert f"| train | {result.data_report.train:,} | groups.jsonl |" in card and "`simbert`" in card
    sim = SimBERT.from_pretrained(result.model_dir)
    assert sim.model.config.pooler_activation == "linear"
    assert len(sim.similar("今天天气怎么样", n=8, k=3, decoding={"seed": 0})) <= 3


def test_classify_beats_the_majority_class_and_logs_attributions(ray_session, tmp_path):
    import random

    import mlflow

    from pipelines.corpora import sentiment_rows
    rows = sentiment_rows()
    random.Random(0).shuffle(rows)
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:3000]), encoding="utf-8")
    recipe = load_recipe(data={
        "name": "c", "workdir": str(tmp_path),
        "model": {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96,
                  "max_position_embeddings": 96, "vocab_max_size": 2500},
        "data": {"train": [str(data)], "max_length": 64, "validation_fraction": 0.1},
        "task": {"name": "classify", "labels": ["neg", "pos"], "attribution_samples": 8},
        "optim": {"lr": 2e-3, "batch_size": 32},
        "schedule": {"max_steps": 60, "warmup_steps": 5, "log_every": 10},
        "checkpoint": {"every_steps": 0}, "tracking": {"registered_model": "tiny-classify"}})
    result = run_training(recipe, progress=False)
    m = result.metrics
    assert m["eval_accuracy"] > m["eval_majority_accuracy"] + 0.1, m
    assert m["attribution_delta_max"] < 1e-2, m
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    page = mlflow.artifacts.load_text(f"runs:/{result.mlflow_run_id}/attributions.html")
    assert page.count('<section class="item">') == 8
