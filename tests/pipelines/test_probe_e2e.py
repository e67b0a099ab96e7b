"""Perturbed Masking end to end (slow): train a tiny Chinese MLM with the `mlm` task on People's Daily
text (segmentation removed), then segment the held-out rows (those whose text hashes into the
validation split, never trained on) with `bert4ray probe`'s pipeline and score against the gold
words: the unsupervised segmentation must beat every-character-a-word and random boundaries at
the same boundary rate.

    .venv/bin/python -m pytest -q -s -m slow tests/pipelines/test_probe_e2e.py
"""

import pytest

from pipelines.probe import load_probe_recipe, run_probe
from pipelines.recipe import load_recipe
from pipelines.train import run_training

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

# Sized for a shared 2-core machine (about 10 minutes in all): see the report printed by the test.
# mlm-tiny's model (hidden 64, 2 layers) on short windows (32 tokens, 64 per worker and step) with a
# higher learning rate and no dropout: with a few hundred steps, or 64-token windows at 1e-3, the MLM
# stays on the unigram plateau (predictions ignore the neighbours) and its impact scores separate
# word boundaries no better than chance (AUC about 0.5); this run reaches eval loss about 4.2.
TRAIN = ["schedule.max_steps=2000", "schedule.warmup_steps=100", "optim.lr=3e-3", "optim.batch_size=64",
         "data.max_length=32", "data.max_rows=0", "model.hidden_dropout_prob=0",
         "model.attention_probs_dropout_prob=0", "data.validation_fraction=0.05", "checkpoint.every_steps=0",
         "tracking.registered_model=null"]


def test_unsupervised_segmentation_beats_the_baselines(ray_session, tmp_path):
    import time
    train = load_recipe("pipelines/recipes/mlm-tiny.yaml", [f"workdir={tmp_path}", *TRAIN])
    t0 = time.perf_counter()
    trained = run_training(train, progress=False)
    print(f"\nMLM: {trained.data_report.summary()}; eval loss {trained.metrics['eval_mlm_loss']:.3f}, "
          f"accuracy {trained.metrics['eval_mlm_accuracy']:.3f} ({time.perf_counter() - t0:.0f} s)")

    probe = load_probe_recipe("pipelines/recipes/probe-tiny.yaml", [
        f"workdir={tmp_path}", f"model.path={trained.model_dir}", "probe.tasks=[segment]",
        f"data.validation_fraction={train.data.validation_fraction}", f"data.split_seed={train.seed}"])
    result = run_probe(probe, progress=False)
    seg = result.report["segmentation"]
    ch = seg["chosen"]
    print(f"held-out rows: {result.rows} ({seg['gaps']} character gaps), {result.metrics['rows_per_s']:.1f} rows/s")
    print(f"{'':34s} {'P':>6s} {'R':>6s} {'F1':>6s}")
    name = f"perturbed masking ({probe.probe.threshold})"
    print(f"{name:34s} {ch['precision']:6.3f} {ch['recall']:6.3f} "
          f"{ch['f1']:6.3f}   threshold {ch['threshold']:.4g}, boundary rate {ch['boundary_rate']:.3f}")
    r = seg["random"]
    print(f"{'random boundaries, same rate':34s} {r['precision']:6.3f} {r['recall']:6.3f} {r['f1']:6.3f}")
    s = seg["single_char"]
    print(f"{'every character a word':34s} {s['precision']:6.3f} {s['recall']:6.3f} {s['f1']:6.3f}")
    for name, c in seg["choices"].items():
        print(f"{'  unsupervised ' + name:34s} {c['precision']:6.3f} {c['recall']:6.3f} {c['f1']:6.3f}   "
              f"threshold {c['threshold']:.4g}")
    print(f"{'  best fixed threshold (oracle)':34s} {'':6s} {'':6s} {seg['oracle']['f1']:6.3f}   "
          f"threshold {seg['oracle']['threshold']:.4g}")
    assert ch["f1"] > s["f1"]
    assert ch["f1"] > r["f1"]

    # The same held-out rows with the cosine distance, for comparison (not the default).
    cos = run_probe(load_probe_recipe("pipelines/recipes/probe-tiny.yaml", [
        f"workdir={tmp_path}", f"model.path={trained.model_dir}", "probe.tasks=[segment]", "probe.distance=cosine",
        f"data.validation_fraction={train.data.validation_fraction}", f"data.split_seed={train.seed}",
        "tracking.enabled=false"]), progress=False).report["segmentation"]
    c = cos["chosen"]
    print(f"{'cosine distance, otsu':34s} {c['precision']:6.3f} {c['recall']:6.3f} {c['f1']:6.3f}   "
          f"threshold {c['threshold']:.4g}; gmm {cos['choices']['gmm']['f1']:.3f}, "
          f"oracle {cos['oracle']['f1']:.3f}")
