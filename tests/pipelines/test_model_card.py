"""The model card training writes (README.md): the run's real values in every section, and the
quickstart's held-out figures added as their own section."""

from __future__ import annotations

import pytest

from components.model import Transformer
from pipelines.commands.quickstart import heldout_summary
from pipelines.data import DataReport
from pipelines.model_card import add_card_section, write_model_card
from pipelines.recipe import load_recipe

METRICS = {"step": 30, "loss": 2.3456, "eval_top1": 0.8125, "eval_top1_chance": 0.0312, "eval_top5": 0.9375,
           "eval_seq2seq": 3.21, "tokens_per_s": 1234.5}


@pytest.fixture
def card(tiny_model_dir, vocab_file):
    model_dir = tiny_model_dir("simbert", pooler_activation="linear")
    Transformer.from_pretrained(model_dir).save_pretrained(model_dir, metadata={"task": "simbert"})
    recipe = load_recipe(data={
        "name": "simbert-small", "workdir": "/tmp/w", "task": {"name": "simbert"},
        "model": {"init_from": "models:/simbert-base@champion"},
        "data": {"train": ["/data/groups.jsonl"], "validation": ["/data/heldout.jsonl"]},
        "optim": {"lr": 3e-3, "batch_size": 16}, "schedule": {"max_steps": 30, "warmup_steps": 3},
        "regularizers": {"noise_std": 0.01}, "tracking": {"registered_model": "simbert-small"}})
    report = DataReport(rows=1210, bad=2, train=1080, validation=128, examples=["groups.jsonl:7: no texts"])
    path = write_model_card(model_dir, recipe, METRICS, report, run_id="simbert-small-1", mlflow_run_id="abc123")
    return model_dir, path.read_text(encoding="utf-8")


def test_the_card_states_the_runs_real_values(card):
    model_dir, text = card
    params = sum(t.numel() for t in Transformer.from_pretrained(model_dir).state_dict().values())
    assert text.startswith("---\nlibrary_name: bert4ray\npipeline_tag: sentence-similarity\n")
    for expected in [
        "# simbert-small", "run `simbert-small-1`, MLflow run `abc123`",
        "2 layers, hidden size 32, 4 heads, feed-forward 64, softmax attention", f"{params:,}",
        "128 tokens", "linear over [CLS]", "`models:/simbert-base@champion`",
        "| train | 1,080 | groups.jsonl |", "| validation | 128 | heldout.jsonl |", "2 unreadable row(s)",
        "On the 128 validation rows at the end of training (step 30)", "| top1 | 0.8125 |", "| top5 | 0.9375 |",
        "Training loss at the last logged step: 2.346", "30 steps, batch 16 per worker x 2 workers",
        "lr 0.003", "regularizers {'noise_std': 0.01}", "max_steps: 30",
        "## Intended use and limits", "similar-sentence retrieval",
        "SimBERT.from_pretrained", "AutoTokenizer.from_pretrained", "BertModel.from_pretrained",
        "--format sentence-transformers", "SentenceTransformer(", f"bert4ray serve --model {model_dir}",
        'mlflow.pyfunc.load_model("runs:/abc123/model")', "`models:/simbert-small/<version>`",
    ]:
        assert expected in text, expected
    assert "tokens_per_s" not in text.split("## Evaluation")[1].split("##")[0]   # only evaluation figures


def test_figures_measured_later_get_their_own_section(card):
    model_dir, _ = card
    quick = {"top1": 0.5, "top1_chance": 0.01, "top5": 0.75, "pair_accuracy": 0.8, "pair_threshold": 0.61,
             "bleu": 12.3, "copy_rate": 0.25}
    line = heldout_summary(quick, 60)
    assert line.startswith("held-out groups: 60  retrieval top-1 0.500 (chance 0.010)")
    for _ in range(2):                                       # idempotent: replaced, not repeated
        text = add_card_section(model_dir, "Held-out evaluation (bert4ray quickstart)", f"It printed:\n\n    {line}"
                                ).read_text(encoding="utf-8")
    assert text.count("## Held-out evaluation (bert4ray quickstart)") == 1 and line in text
    order = [text.index(h) for h in ("## Evaluation", "## Held-out evaluation", "## Intended use", "## Recipe")]
    assert order == sorted(order)


def test_a_run_without_validation_says_so(tiny_model_dir):
    model_dir = tiny_model_dir("mlm")
    recipe = load_recipe(data={"name": "m", "task": {"name": "mlm"}, "data": {"source": "peoples-daily"}})
    text = write_model_card(model_dir, recipe, {"step": 5, "loss": 7.0}, DataReport(train=100),
                            run_id="m-1").read_text()
    assert "pipeline_tag: fill-mask" in text and "bundled corpus `peoples-daily`" in text
    assert "No validation split: this run computed no evaluation figures." in text
    assert "mlflow" not in text.lower().split("## how to load")[1]
    assert "bert4ray serve --parser-model" in text and "BertForMaskedLM" in text
