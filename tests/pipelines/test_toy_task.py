"""A task registered from outside pipelines/tasks (tests/pipelines/toy_task.py: one `@register`)
trains through run_training with no other edit: the registry is the only place a task is named."""

import json

import pytest
import torch

import tests.pipelines.toy_task  # noqa: F401  (registers "toy-first-char")
from pipelines.corpora import peoples_daily_rows
from pipelines.recipe import load_recipe
from pipelines.tasks import get_task
from pipelines.train import run_training


@pytest.mark.slow             # 32-38 s of Ray Train: in the slow set, to keep the default suite under 15 min
def test_a_task_registered_outside_the_package_trains_and_exports(ray_session, tmp_path):
    from components.model import Transformer
    data = tmp_path / "pd.jsonl"
    data.write_text("".join(json.dumps({"text": r["text"]}, ensure_ascii=False) + "\n"
                            for r in peoples_daily_rows()[:200]), encoding="utf-8")
    recipe = load_recipe(data={
        "name": "toy", "workdir": str(tmp_path),
        "model": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                  "max_position_embeddings": 48, "vocab_max_size": 800},
        "data": {"train": [str(data)], "max_length": 32, "validation_fraction": 0.1},
        "task": {"name": "toy-first-char"},
        "optim": {"lr": 1e-3, "batch_size": 8},
        "schedule": {"max_steps": 1, "warmup_steps": 0, "log_every": 1},
        "checkpoint": {"every_steps": 0}})
    assert get_task("toy-first-char").name == "toy-first-char"
    result = run_training(recipe, progress=False)
    steps = [h for h in result.history if "first_char" in h]
    assert [h["step"] for h in steps] == [1] and torch.isfinite(torch.tensor(steps[0]["first_char"]))
    assert "eval_loss" in result.metrics
    assert json.loads((result.model_dir / "bert4ray.json").read_text())["task"] == "toy-first-char"
    Transformer.from_pretrained(result.model_dir)
