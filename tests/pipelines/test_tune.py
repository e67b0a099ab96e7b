"""`bert4ray tune`: recipe checks, each searcher on a tiny trained SimBERT (decoding settings scored by
dev BLEU), MLflow parent and child runs, the written best recipe, and a training search with ASHA."""

import json
import time

import pytest
import yaml

from pipelines.cli import main
from pipelines.recipe import RecipeError
from pipelines.tune import run_tune
from pipelines.tune_recipe import check_paths, load_tune_recipe
from tests.tiny_training import GROUPS, train_tiny_simbert

pytestmark = pytest.mark.timeout(600)

SPACE = {"top_k": {"randint": [1, 20]}, "top_p": {"uniform": [0.5, 1.0]},
         "temperature": {"loguniform": [0.2, 1.5]}, "consistent": {"choice": [True, False]}}


@pytest.fixture(scope="module")
def simbert(tmp_path_factory, vocab_file):
    """A tiny SimBERT that has learnt GROUPS, and a dev set of those groups."""
    root = tmp_path_factory.mktemp("tune")
    model = train_tiny_simbert(root / "model", vocab_file, steps=60)
    dev = root / "dev.jsonl"
    dev.write_text("".join(json.dumps({"texts": g}, ensure_ascii=False) + "\n" for g in GROUPS), encoding="utf-8")
    return model, dev


def decoding_recipe(simbert, workdir, **changes):
    model, dev = simbert
    data = {"name": "t", "workdir": str(workdir), "mode": "decoding", "model": str(model),
            "dev": {"file": str(dev)}, "objective": {"metric": "bleu"},
            "base": {"strategy": "sample", "max_new_tokens": 16, "seed": 0}, "space": SPACE,
            "search": {"searcher": "optuna", "num_samples": 4, "max_concurrent": 2, "seed": 0}}
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            data[section] = {**data.get(section, {}), name: value}
        else:
            data[section] = value
    return data


# --- recipe checks (no Ray) ------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"serch": {}}, "did you mean 'search'"),
    ({"search": {"searcher": "optima"}}, "did you mean 'optuna'"),
    ({"search": {"searcher": "nevergrad", "optimizer": "OnePlusOn"}}, "did you mean 'OnePlusOne'"),
    ({"search": {"max_concurrent": 0}}, "search.max_concurrent' must be >= 1"),
    ({"space": {"top_k": {"unifrm": [1, 5]}}}, "unknown distribution 'unifrm' (did you mean 'uniform'?)"),
    ({"space": {"top_k": [1, 5]}}, "'space.top_k' must be one distribution"),
    ({"space": {"top_p": {"uniform": [0.9, 0.5]}}}, "needs low < high"),
    ({"space": {"top_p": {"loguniform": [0.0, 0.5]}}}, "needs low > 0"),
    ({"space": {"top_k": {"randint": [1.5, 4]}}}, "bounds must be integers"),
    ({"space": {"top_kk": {"randint": [1, 5]}}}, "did you mean 'space.top_k'"),
    ({"space": {"temperature": {"uniform": [0.0, 1.0]}}}, "temperature must be > 0"),
    ({"base": {"strategy": "sampel"}}, "decoding strategy must be one of"),
    ({"base": {"tempreature": 1.0}}, "did you mean 'temperature'"),
    ({"objective": {"metric": "rouge"}}, "valid: bleu, f1"),
    ({"scheduler": {"name": "asha"}}, "a decoding trial reports once"),
    ({"model": "/nonexistent/model"}, "is not a model directory"),
    ({"dev": {"file": "/nonexistent/dev.jsonl"}}, "does not exist"),
    ({"recipe": "pipelines/recipes/classify-tiny.yaml"}, "belong to mode 'training'"),
])
def test_recipe_errors_name_the_key(simbert, tmp_path, change, message):
    data = decoding_recipe(simbert, tmp_path)
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and key in ("search",) else value
    with pytest.raises(RecipeError) as err:
        check_paths(load_tune_recipe(data=data))         # paths are checked when a run starts
    assert message in str(err.value)


@pytest.mark.parametrize("change, message", [
    ({"space": {"optim.lrr": {"loguniform": [1e-4, 1e-2]}}}, "did you mean 'optim.lr'"),
    ({"space": {"optim.lr": {"choice": ["fast"]}}}, "'optim.lr' must be float"),
    ({"objective": {"metric": "bleu"}}, "task 'classify' does not generate"),
    ({"objective": {"metric": "macro_f1"}}, "did you mean 'eval_macro_f1'"),
    ({"overrides": ["schedule.eval_every=0"], "scheduler": {"name": "asha"}}, "ASHA needs intermediate"),
    ({"space": {}}, "nothing to tune"),
])
def test_training_recipe_errors(tmp_path, change, message):
    data = {"mode": "training", "workdir": str(tmp_path), "recipe": "pipelines/recipes/classify-tiny.yaml",
            "overrides": ["schedule.eval_every=10"], "objective": {"metric": "eval_macro_f1"},
            "space": {"optim.lr": {"loguniform": [1e-4, 3e-3]}}, **change}
    with pytest.raises(RecipeError) as err:
        load_tune_recipe(data=data)
    assert message in str(err.value)


def test_set_overrides_reach_base_and_space(simbert, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(decoding_recipe(simbert, tmp_path)), encoding="utf-8")
    r = load_tune_recipe(path, ["base.top_k=5", "space.top_p={uniform: [0.6, 0.9]}", "search.num_samples=3"])
    assert r.base["top_k"] == 5 and r.space["top_p"] == {"uniform": [0.6, 0.9]} and r.search.num_samples == 3


def test_cli_bad_recipe_exits_2_with_one_line(simbert, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**decoding_recipe(simbert, tmp_path), "space": {"top_p": {"gauss": [0, 1]}}}),
                   encoding="utf-8")
    assert main(["tune", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bert4ray tune: error: recipe key 'space.top_p': unknown distribution 'gauss'" in err
    assert "Traceback" not in err
    assert main(["tune", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --- searches on Ray -------------------------------------------------------------------------------
@pytest.mark.parametrize("searcher, extra", [("random", {}), ("nevergrad", {"optimizer": "OnePlusOne"})])
def test_each_searcher_runs(ray_session, simbert, tmp_path, searcher, extra):
    data = decoding_recipe(simbert, tmp_path, search={"searcher": searcher, "num_samples": 3, "max_concurrent": 2,
                                                      "seed": 0, **extra}, tracking={"enabled": False})
    t0 = time.perf_counter()
    result = run_tune(load_tune_recipe(data=data), progress=False)
    print(f"{searcher}: {len(result.trials)} trials in {time.perf_counter() - t0:.1f} s, best {result.best.score:.3f}")
    assert len(result.trials) == 3 and all(t.status == "done" for t in result.trials)
    assert len({json.dumps(t.config, sort_keys=True) for t in result.trials}) == 3      # three different points
    for t in result.trials:
        assert set(t.config) == set(SPACE) and 1 <= t.config["top_k"] <= 20 and 0.5 <= t.config["top_p"] <= 1
        assert 0.0 <= t.score <= 1.0
    assert result.best.score == max(t.score for t in result.trials)
    assert (tmp_path / "tune" / "t" / "best.yaml").is_file() and result.parent_run_id is None


def test_optuna_beats_the_defaults_tracks_in_mlflow_and_writes_a_recipe_that_runs(ray_session, simbert, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    data = decoding_recipe(simbert, tmp_path, search={"searcher": "optuna", "num_samples": 8, "max_concurrent": 2,
                                                      "seed": 0})
    t0 = time.perf_counter()
    result = run_tune(load_tune_recipe(data=data), progress=False)
    print(f"optuna: 8 trials in {time.perf_counter() - t0:.1f} s; default bleu {result.default['bleu']:.3f}, "
          f"best {result.best.score:.3f} with {result.best.config}")
    # Pure sampling at temperature 1 (the base alone) is the default: TPE finds settings at least as good.
    assert result.best.score >= result.default["bleu"]
    assert not result.kept_default and result.chosen == {**data["base"], **result.best.config}

    # MLflow: one parent run and a child run per trial, plus one for the default settings.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("bert4ray-tune")
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["best_bleu"] == pytest.approx(result.best.score)
    assert parent.data.metrics["default_bleu"] == pytest.approx(result.default["bleu"])
    assert parent.data.params["search.searcher"] == "optuna" and "space.top_k.randint" in parent.data.params
    assert parent.data.params["objective.mode"] == "max"              # the recipe as resolved (auto -> max)
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert len(children) == 9 and all(c.info.status == "FINISHED" for c in children)
    by_trial = {c.data.tags.get("bert4ray.tune.trial_id"): c for c in children}
    best_child = by_trial[result.best.trial_id]
    assert best_child.data.metrics["bleu"] == pytest.approx(result.best.score)
    assert best_child.data.params["top_k"] == str(result.best.config["top_k"])
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {"best.yaml", "decoding.json", "trials.json"} <= artifacts

    # best.yaml is a tune recipe with an empty space: it runs (through the CLI) and re-scores the same.
    best = result.best_file
    assert yaml.safe_load(best.read_text())["base"] == result.chosen
    assert json.loads((best.parent / "decoding.json").read_text()) == result.chosen
    capsys.readouterr()
    assert main(["tune", str(best), "--quiet", "--set", f"workdir={tmp_path / 'again'}"]) == 0
    out = capsys.readouterr().out
    assert f"default settings (base): bleu {result.best.score:.4f}" in out
    assert "the space is empty" in out


def test_cli_prints_the_trial_table_for_a_beam_search_space(ray_session, simbert, tmp_path, capsys):
    path = tmp_path / "r.yaml"
    space = {"strategy": {"choice": ["greedy", "beam"]}, "num_beams": {"randint": [1, 4]},
             "length_penalty": {"uniform": [0.5, 2.0]}, "repetition_penalty": {"uniform": [1.0, 1.5]}}
    path.write_text(yaml.safe_dump(decoding_recipe(simbert, tmp_path, space=space, search={
        "searcher": "random", "num_samples": 3, "max_concurrent": 2}), allow_unicode=True), encoding="utf-8")
    assert main(["tune", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 trials, by bleu (max)" in out and "num_beams" in out and "length_penalty" in out
    assert "default settings (base): bleu" in out
    line = next(x for x in out.splitlines() if x.startswith("best decoding settings: "))
    assert "strategy=" in line and "num_beams=" in line and "max_new_tokens=16" in line
    assert out.rstrip().endswith(str(tmp_path / "tune" / "t" / "best.yaml"))


# --- training search with ASHA ---------------------------------------------------------------------
CITIES = list("京沪穗深宁汉杭苏渝蓉津厦青连济郑")
ITEMS = ["手机", "衣服", "书", "鞋子", "电脑", "水果", "耳机", "帽子", "包", "电视", "桌子", "杯子", "被子", "药", "茶叶", "玩具"]
WEATHER = ["{}明天天气怎么样", "{}今天会下雨吗", "{}的天气好吗", "{}明天下不下雨", "{}这周冷不冷"]
DELIVERY = ["我的{}快递还没到", "{}的快递怎么还没到", "{}订单什么时候发货", "我买的{}还没发货", "{}的物流到哪了"]


def classification_rows() -> list[dict]:
    """160 short questions, weather or delivery: a tiny model learns them in a few dozen steps at a
    good learning rate, and not at a poor one, so the trials differ."""
    import random
    rows = ([{"text": t.format(c), "label": "weather"} for t in WEATHER for c in CITIES]
            + [{"text": t.format(x), "label": "delivery"} for t in DELIVERY for x in ITEMS])
    random.Random(0).shuffle(rows)
    return rows


@pytest.mark.slow
def test_training_search_with_asha_stops_trials_and_writes_a_training_recipe_that_trains(ray_session, tmp_path):
    """classify-tiny on Ray Train, one worker per trial, with the learning rate searched by TPE and
    ASHA stopping trials whose validation loss lags at 8 and 16 steps (about 3-4 minutes here)."""
    from mlflow.tracking import MlflowClient

    from pipelines.recipe import load_recipe
    from pipelines.train import run_training

    data_file = tmp_path / "cls.jsonl"
    data_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in classification_rows()),
                         encoding="utf-8")
    overrides = ["scaling.num_workers=1", "data.source=files", f"data.train=[{data_file}]",
                 "data.validation_fraction=0.2", "task.labels=[weather,delivery]", "schedule.max_steps=32",
                 "schedule.eval_every=8", "schedule.log_every=8", "schedule.warmup_ratio=0", "optim.batch_size=16",
                 "model.hidden_size=32", "model.intermediate_size=64", "model.hidden_dropout_prob=0",
                 "data.max_length=32", "model.max_position_embeddings=32", "checkpoint.max_failures=0"]
    data = {"name": "cls", "workdir": str(tmp_path), "mode": "training",
            "recipe": "pipelines/recipes/classify-tiny.yaml", "overrides": overrides,
            "objective": {"metric": "eval_loss"},          # mode auto: min
            "space": {"optim.lr": {"loguniform": [1e-5, 2e-2]}},
            "search": {"searcher": "optuna", "num_samples": 4, "max_concurrent": 1, "seed": 0},
            "scheduler": {"name": "asha", "grace_period": 8, "reduction_factor": 2}}
    t0 = time.perf_counter()
    result = run_tune(load_tune_recipe(data=data), progress=False)
    print(f"\ntraining search: {len(result.trials)} trials in {time.perf_counter() - t0:.0f} s")
    for t in result.trials:
        print(f"  {t.trial_id} lr {t.config['optim.lr']:.2e} {t.status:8s} eval_loss {t.score:.4f} "
              f"at step {t.metrics.get('step')}{' (default)' if t.default else ''}")
    assert result.mode == "min" and len(result.trials) == 4
    assert [t.config for t in result.trials if t.default] == [{"optim.lr": 0.001}]    # the recipe's own lr
    stopped = [t for t in result.trials if t.status == "stopped"]
    assert stopped and all(t.metrics["step"] < 32 for t in stopped)
    assert result.best.status == "done" and result.best.metrics["step"] == 32
    assert result.best.score == min(t.score for t in result.trials if t.status == "done")
    assert "eval_macro_f1" in result.best.metrics

    # MLflow: the trials' training runs are the children; those ASHA stopped ended KILLED.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("bert4ray-tune")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    by_trial = {c.data.tags["bert4ray.tune.trial_id"]: c for c in children}
    assert set(by_trial) == {t.trial_id for t in result.trials}
    for t in result.trials:
        assert by_trial[t.trial_id].info.status == ("KILLED" if t.status == "stopped" else "FINISHED")
    assert by_trial[result.best.trial_id].data.params["optim.lr"] == str(result.best.config["optim.lr"])
    assert client.get_run(result.parent_run_id).data.metrics["trials_stopped"] == len(stopped)

    # best.yaml is the training recipe with the best values; `bert4ray train` runs it.
    best = load_recipe(result.best_file)
    assert best.optim.lr == result.best.config["optim.lr"] and best.scaling.num_workers == 1
    assert best.tracking.parent_run_id is None and best.data.train == [str(data_file)]
    trained = run_training(load_recipe(result.best_file, [f"workdir={tmp_path / 'again'}"]), progress=False)
    assert trained.model_dir.is_dir()
    assert trained.metrics["eval_loss"] == pytest.approx(result.best.score, abs=1e-3)    # same seed, same run
