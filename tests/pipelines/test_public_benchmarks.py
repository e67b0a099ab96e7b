"""The public-benchmark recipes and commands on small subsets: `bert4ray probe` with the SIGHAN PKU
and UD recipes, `bert4ray rank` and `bert4ray sts`. The sets are read from ../shared/data beside
the repository (never copied into it); tiny random models keep each run to seconds, so these tests
guard the plumbing and the scoring, not the figures (benchmarks/RESULTS.md has those)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from components.probing.baselines import right_chain
from components.probing.evaluate import attachment_scores, segmentation_scores
from components.probing.sighan import align_raw_gold, read_gold, read_raw

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
RECIPES = REPO / "pipelines" / "recipes"


def shared(*parts: str) -> str:
    path = SHARED.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"public evaluation data not found at {path}")
    return str(path)


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory, vocab_file) -> Path:
    from components.model import Transformer
    from components.tokenizer import Tokenizer
    from tests.conftest import tiny_config
    out = tmp_path_factory.mktemp("public") / "model"
    torch.manual_seed(3)
    Transformer(tiny_config(Tokenizer(vocab_file).vocab_size, initializer_range=0.3)).save_pretrained(
        out, metadata={"vocab_file": str(vocab_file), "task": "mlm"})
    return out


def run_recipe(name: str, overrides: list[str]):
    from pipelines.probe import load_probe_recipe, run_probe
    return run_probe(load_probe_recipe(RECIPES / name, overrides), progress=False)


@pytest.mark.slow
def test_sighan_recipe_scores_method_and_baselines(ray_session, tiny_mlm, tmp_path):
    raw, gold = shared("sighan2005", "pku_test.utf8"), shared("sighan2005", "pku_test_gold.utf8")
    words = shared("sighan2005", "pku_training_words.utf8")
    result = run_recipe("probe-sighan-pku.yaml", [
        f"model.path={tiny_mlm}", f"data.files=[{raw}]", f"eval.gold={gold}", f"eval.train_words={words}",
        "data.max_rows=150", f"workdir={tmp_path}", "compute.actors=1", "eval.seeds=2"])
    m, seg = result.metrics, result.report["segmentation"]
    names = [n for n, _ in result.report["table"]]
    assert names[:4] == ["perturbed masking (unsupervised threshold)", "perturbed masking (oracle threshold)",
                         "PMI (Otsu threshold)", "PMI (oracle threshold)"]
    assert seg["sentences"] == 150
    for key in ("seg_f1", "seg_oov_recall", "seg_iv_recall", "seg_pmi_f1", "seg_pmi_oracle_f1", "seg_oracle_f1",
                "seg_single_char_f1", "seg_random_f1"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["seg_oracle_f1"] >= m["seg_f1"] - 1e-12 and m["seg_pmi_oracle_f1"] >= m["seg_pmi_f1"] - 1e-12
    # The PMI segmenter from People's Daily is a real baseline: far above every character a word.
    assert m["seg_pmi_f1"] > m["seg_single_char_f1"] + 0.2
    # eval.layers: all adds every layer's rows from the same passes; the last layer's is the headline.
    assert m["seg_layer2_f1"] == pytest.approx(m["seg_f1"]) and 0.0 <= m["seg_layer1_oracle_f1"] <= 1.0
    assert "  layer 1, Otsu threshold" in names
    # The single-character row equals the scorer run directly on the same gold lines.
    ids = {int(r["id"].rsplit("#", 1)[1]) for r in result_rows(result.output_dir)}
    rows = align_raw_gold(read_raw(Path(raw).read_text("utf-8")), read_gold(Path(gold).read_text("utf-8")))
    sub = [w for k, _, w in rows if k in ids]
    direct = segmentation_scores([list("".join(w)) for w in sub], sub)
    assert m["seg_single_char_f1"] == pytest.approx(direct["f1"])
    run = mlflow.get_run(result.mlflow_run_id)
    assert run.data.metrics["seg_pmi_f1"] == pytest.approx(m["seg_pmi_f1"])
    table = mlflow.artifacts.load_text(f"runs:/{result.mlflow_run_id}/table.txt")
    assert "PMI (Otsu threshold)" in table and "every character a word" in table


def result_rows(out_dir: Path) -> list[dict]:
    import pyarrow.parquet as pq
    return pq.read_table(str(out_dir)).select(["id"]).to_pylist()


@pytest.mark.parametrize("recipe,treebank", [("probe-ud-gsdsimp.yaml", ("ud-chinese-gsdsimp", "zh_gsdsimp-ud-dev.conllu")),
                                             ("probe-ud-pud.yaml", ("ud-english-pud", "en_pud-ud-test.conllu"))])
def test_ud_recipes_choose_the_layer_on_a_held_out_slice(ray_session, tiny_mlm, tmp_path, recipe, treebank):
    from components.probing.treebank import read_conllu
    path = shared(*treebank)
    result = run_recipe(recipe, [f"model.path={tiny_mlm}", f"data.files=[{path}]", "data.max_rows=24",
                                 "eval.select_rows=8", f"workdir={tmp_path}", "compute.actors=1", "eval.seeds=2"])
    dep, m = result.report["dependency"], result.metrics
    assert (dep["select_sentences"], dep["test_sentences"]) == (8, 16)
    for d in ("eisner", "chu_liu_edmonds"):
        layer = int(m[f"dep_{d}_layer"])
        # The headline is the chosen layer's score on the test slice, and that layer won on the selection slice.
        assert m[f"dep_{d}_uas_nopunct"] == m[f"dep_{d}_layer{layer}_uas_nopunct"]
        sel = {li: dep["layers"][f"{d}_layer{li}"]["select"]["uas_nopunct"] for li in (1, 2)}
        assert sel[layer] == max(sel.values())
    # Baselines on the same 16 test sentences (file order: the ids' line numbers).
    sents = read_conllu(Path(path).read_text("utf-8"))
    ids = sorted(int(r["id"].rsplit("#", 1)[1]) for r in result_rows(result.output_dir))
    test = [sents[k - 1] for k in ids[8:]]
    rc = attachment_scores([right_chain(len(s.heads)) for s in test], [s.heads for s in test])
    assert m["dep_right_chain_uas"] == pytest.approx(rc["uas"])
    assert m["dep_left_chain_uuas"] == pytest.approx(m["dep_right_chain_uuas"])
    assert 0.0 < m["dep_random_uas_nopunct"] < 1.0
    # The recipes also decode the same matrices with the gold root (the paper's setting).
    assert 0.0 <= m["dep_gold_root_eisner_uas"] <= 1.0 and "dep_gold_root_chu_liu_edmonds_layer" in m


def test_rank_command_scores_model_and_baselines(tiny_model_dir, tmp_path, capsys):
    from pipelines.cli import main
    model = tiny_model_dir()
    assert main(["rank", "--model", str(model), "--contexts", "20", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "20 contexts" in out and "TF-IDF cosine" in out and "random" in out
    run_id = out.split("mlflow run: ")[1].split()[0]
    metrics = mlflow.get_run(run_id).data.metrics
    assert metrics["random_r10_at_1"] == pytest.approx(0.1) and metrics["random_r10_at_5"] == pytest.approx(0.5)
    assert metrics["random_r10_mrr"] == pytest.approx(sum(1 / r for r in range(1, 11)) / 10)
    for key in ("model_r10_at_1", "model_r10_at_2", "model_r10_mrr", "tfidf_r10_at_1", "model_per_token_r10_at_5"):
        assert 0.0 <= metrics[key] <= 1.0


def test_sts_command_and_stsb_groups(tiny_model_dir, tmp_path, capsys):
    from components.textsim import spearman
    from pipelines.cli import main
    from pipelines.pairs import read_scored_pairs as read_sts
    test = tmp_path / "sts-test-subset.data"
    lines = Path(shared("sts-b-zh", "STS-B.test.data")).read_text("utf-8").splitlines()[:200]
    test.write_text("\n".join(lines) + "\n", encoding="utf-8")
    train = shared("sts-b-zh", "STS-B.train.data")
    model = tiny_model_dir()
    assert main(["sts", "--model", str(model), "--test", str(test), "--train", train, "--no-mlflow"]) == 0
    out = capsys.readouterr().out
    assert "SimBERT retrieval vector" in out and "character Jaccard" in out
    from pipelines.public_eval import sts_report
    report = sts_report(None, test, train)
    rows = read_sts(test)
    jac = [len(set(a) & set(b)) / len(set(a) | set(b)) for a, b, _ in rows]
    assert report["metrics"]["jaccard_spearman"] == pytest.approx(spearman(jac, [s for _, _, s in rows]))
    assert report["metrics"]["tfidf_spearman"] > 0.3
    # STS-B train pairs scored >= 4 become SimBERT groups.
    groups = tmp_path / "groups.jsonl"
    assert main(["data", "pairs", "--input", train, "--min-score", "4", "--out", str(groups)]) == 0
    got = [json.loads(line)["texts"] for line in groups.read_text("utf-8").splitlines()]
    positives = sum(1 for _, _, s in read_sts(train) if s >= 4)
    assert 0 < len(got) <= positives and all(len(g) >= 2 for g in got)
    assert np.mean([len(g) for g in got]) < 3


@pytest.mark.slow
def test_cosent_recipe_trains_on_scored_stsb_pairs_and_sts_reads_the_model(tmp_path, capsys):
    """`bert4ray data pairs --scores` then `bert4ray train pipelines/recipes/cosent-stsb.yaml` as a
    user types them (a subprocess, default Ray settings), on 640 train and 200 validation pairs, from
    a small random model (not the recipe's SimBERT start) whose vocabulary covers the pairs; `bert4ray
    sts` then reads the exported model."""
    from pipelines.cli import main
    from pipelines.tasks.cosent import CoSENTTask
    data = {}
    for split, name, n in (("train", "STS-B.train.data", 640), ("valid", "STS-B.valid.data", 200)):
        subset = tmp_path / f"{split}.data"
        lines = Path(shared("sts-b-zh", name)).read_text("utf-8").splitlines()[:n]
        subset.write_text("\n".join(lines) + "\n", encoding="utf-8")
        data[split] = tmp_path / f"{split}.jsonl"
        assert main(["data", "pairs", "--input", str(subset), "--scores", "--out", str(data[split])]) == 0
    assert f"{n} scored pairs" in capsys.readouterr().out
    row = json.loads(data["train"].read_text("utf-8").splitlines()[0])
    assert CoSENTTask().check_row(row) is None
    # A large initializer range keeps the random model's sentence vectors apart: the default one gives
    # cosines within 1e-6 of each other, whose ranks are rounding noise.
    from components.model import Transformer
    from components.tokenizer import Tokenizer
    from tests.conftest import SPECIALS, tiny_config
    chars = sorted({c for split in ("train", "valid") for c in (tmp_path / f"{split}.data").read_text("utf-8")
                    if not c.isspace()})
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + chars) + "\n", encoding="utf-8")
    init = tmp_path / "init"
    torch.manual_seed(0)
    Transformer(tiny_config(Tokenizer(vocab).vocab_size, initializer_range=0.3, pooler_activation="linear")
                ).save_pretrained(init, metadata={"vocab_file": str(vocab), "task": "simbert"})
    out = tmp_path / "model"
    overrides = [f"model.init_from={init}", f"workdir={tmp_path}", f"data.train=[{data['train']}]",
                 f"data.validation=[{data['valid']}]", "schedule.epochs=2", "schedule.warmup_steps=3",
                 "schedule.log_every=4", "schedule.eval_every=10", "checkpoint.every_steps=0"]
    proc = subprocess.run([sys.executable, "-m", "pipelines", "train", str(RECIPES / "cosent-stsb.yaml"),
                           "--output", str(out), "--quiet", *(a for o in overrides for a in ("--set", o))],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["bert4ray"], output_format="list")[0]
    client = mlflow.MlflowClient()
    loss = [m.value for m in client.get_metric_history(run.info.run_id, "cosent")]
    spearman = [m.value for m in client.get_metric_history(run.info.run_id, "eval_spearman")]
    assert len(loss) == 5 and min(loss[-2:]) < loss[0], loss          # 20 steps: 10 per epoch of 640 pairs
    assert len(spearman) == 2, spearman
    # The evaluation inside training and `bert4ray sts` on the exported model agree on the same pairs.
    from pipelines.public_eval import sts_report
    report = sts_report(out, tmp_path / "valid.data", tmp_path / "train.data")
    assert report["metrics"]["model_spearman"] == pytest.approx(spearman[-1], abs=1e-4)
    assert main(["sts", "--model", str(out), "--test", str(tmp_path / "valid.data"), "--train",
                 str(tmp_path / "train.data"), "--no-mlflow"]) == 0
    assert "Spearman x 100 on 200 pairs" in capsys.readouterr().out
