"""Integrated Gradients: parity with captum (an independent implementation), completeness,
chunking invariance, baselines, targets and bad input, on tiny classifiers defined here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, LayerIntegratedGradients
from captum.attr._utils.approximation_methods import approximation_parameters

from components.attribution import (
    RULES,
    Attribution,
    Attributor,
    attribute,
    attribute_batch,
    integrated_gradients,
    integration_points,
)

TEXTS = ["这家酒店很干净，服务也好", "不好", "hello world 我们的快递太慢了"]


@pytest.fixture
def classifier(make_model):
    # initializer_range 0.3: a random tiny model whose class probabilities actually move with the
    # input (at BERT's 0.02 every output is ~uniform and every attribution ~0, proving nothing).
    return make_model(num_labels=3, initializer_range=0.3, labels=["neg", "neu", "pos"])


def captum_forward(model, quantity="prob"):
    def forward(ids, seg, mask):
        logits = model(ids, seg, mask, return_logits=False).class_logits
        return logits.softmax(-1) if quantity == "prob" else logits
    return forward


def pad_baseline_ids(tokenizer, ids):
    base = ids.clone()
    keep = (ids == tokenizer.cls_id) | (ids == tokenizer.sep_id)
    base[~keep] = tokenizer.pad_id
    return base


def captum_lig(model, tokenizer, texts, targets, baseline_ids=None, quantity="prob", **kw):
    """captum's LayerIntegratedGradients on model.embeddings over the padded batch."""
    batch = tokenizer.encode_batch(texts)
    base = pad_baseline_ids(tokenizer, batch.input_ids) if baseline_ids is None else baseline_ids
    lig = LayerIntegratedGradients(captum_forward(model, quantity), model.embeddings)
    attrs, delta = lig.attribute(batch.input_ids, base, target=targets,
                                 additional_forward_args=(batch.segment_ids, batch.attention_mask),
                                 return_convergence_delta=True, **kw)
    return attrs.detach(), delta.detach()


# --- quadrature ----------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", [r for r in RULES if r != "riemann_trapezoid"])
def test_points_match_captum(rule):
    alphas, weights = integration_points(rule, 7)
    step_sizes, alpha_fn = approximation_parameters(rule)
    np.testing.assert_allclose(alphas.numpy(), alpha_fn(7), atol=1e-12)
    np.testing.assert_allclose(weights.numpy(), step_sizes(7), atol=1e-12)


def test_trapezoid_weights_sum_to_one():
    # Nodes 0, 1/(n-1), ..., 1 with spacing h = 1/(n-1): weights h/2, h, ..., h, h/2. captum 0.9 uses
    # h = 1/n on the same nodes, so its weights sum to (n-1)/n (see the parity test below).
    alphas, weights = integration_points("riemann_trapezoid", 5)
    np.testing.assert_allclose(alphas.numpy(), [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(weights.numpy(), [0.125, 0.25, 0.25, 0.25, 0.125])
    step_sizes, _ = approximation_parameters("riemann_trapezoid")
    np.testing.assert_allclose(np.sum(step_sizes(5)), 4 / 5)


@pytest.mark.parametrize("rule", RULES)
def test_rules_integrate_polynomials(rule):
    n = 6
    alphas, weights = integration_points(rule, n)
    for degree in range(5):
        approx = float((weights * alphas**degree).sum())
        exact = 1 / (degree + 1)
        if rule == "gausslegendre" or degree == 0 or (degree == 1 and rule in ("riemann_middle", "riemann_trapezoid")):
            assert approx == pytest.approx(exact, abs=1e-12), (rule, degree)
        else:
            assert approx != pytest.approx(exact, abs=1e-6)
    # Gauss-Legendre with n nodes is exact up to degree 2n-1.
    glx, glw = integration_points("gausslegendre", n)
    assert float((glw * glx ** (2 * n - 1)).sum()) == pytest.approx(1 / (2 * n), abs=1e-12)


@pytest.mark.parametrize("rule, n, message", [
    ("simpson", 10, "unknown integration rule 'simpson'"),
    ("gausslegendre", 0, "n_steps must be a positive integer"),
    ("riemann_trapezoid", 1, "trapezoid rule needs n_steps >= 2"),
])
def test_bad_rules(rule, n, message):
    with pytest.raises(ValueError, match=message):
        integration_points(rule, n)


# --- parity with captum --------------------------------------------------------------------------
@pytest.mark.parametrize("rule", RULES)
def test_parity_with_captum_layer_ig(classifier, tokenizer, rule):
    n = 16
    ours = attribute_batch(classifier, tokenizer, TEXTS, rule=rule, n_steps=n)
    targets = [r.target for r in ours]
    theirs, theirs_delta = captum_lig(classifier, tokenizer, TEXTS, targets, n_steps=n, method=rule)
    # captum's trapezoid weights are ours times (n-1)/n (see test_trapezoid_weights_sum_to_one).
    scale = n / (n - 1) if rule == "riemann_trapezoid" else 1.0
    for i, r in enumerate(ours):
        T = len(r.tokens)
        their_scores = theirs[i, :T].double().sum(-1) * scale
        assert np.abs(their_scores.numpy()).max() > 1e-2                    # not trivially zero
        np.testing.assert_allclose(r.scores, their_scores.numpy(), atol=1e-4)
        np.testing.assert_allclose(r.norms, (theirs[i, :T].double() * scale).norm(dim=-1).numpy(), atol=1e-4)
        assert float(theirs[i, T:].abs().sum()) == 0.0                      # captum's padding: nothing
        if rule != "riemann_trapezoid":
            assert r.delta == pytest.approx(abs(float(theirs_delta[i])), abs=1e-5)


def test_per_coordinate_parity_and_logit(classifier, tokenizer):
    """The full (T, H) attribution tensors, for the logit as F, with the core function."""
    batch = tokenizer.encode_batch(TEXTS)
    lengths = batch.attention_mask.sum(1).tolist()
    with torch.no_grad():
        x = classifier.embed(batch.input_ids, batch.segment_ids)
        b = classifier.embed(pad_baseline_ids(tokenizer, batch.input_ids), batch.segment_ids)
    targets = [2, 0, 1]
    ours = integrated_gradients(classifier, [x[i, :T] for i, T in enumerate(lengths)],
                                [b[i, :T] for i, T in enumerate(lengths)], targets,
                                [batch.segment_ids[i, :T] for i, T in enumerate(lengths)],
                                quantity="logit", n_steps=20)
    theirs, _ = captum_lig(classifier, tokenizer, TEXTS, targets, quantity="logit", n_steps=20)
    for i, T in enumerate(lengths):
        assert ours[i].shape == (T, classifier.config.hidden_size)
        torch.testing.assert_close(ours[i], theirs[i, :T].double(), atol=1e-4, rtol=0)


def test_zero_baseline_matches_captum_ig(classifier, tokenizer):
    ours = attribute(classifier, tokenizer, TEXTS[0], baseline="zero", n_steps=24, target="pos")
    ids, seg = tokenizer.encode(TEXTS[0])
    ids, seg = torch.tensor([ids]), torch.tensor([seg])
    with torch.no_grad():
        x = classifier.embed(ids, seg)

    def forward(embeds):
        rows = embeds.shape[0]
        return classifier(ids.expand(rows, -1), seg.expand(rows, -1), inputs_embeds=embeds,
                          return_logits=False).class_logits.softmax(-1)

    theirs, delta = IntegratedGradients(forward).attribute(x, torch.zeros_like(x), target=2, n_steps=24,
                                                          return_convergence_delta=True)
    np.testing.assert_allclose(ours.scores, theirs[0].double().sum(-1).numpy(), atol=1e-4)
    assert ours.delta == pytest.approx(abs(float(delta)), abs=1e-5)
    assert ours.target == 2 and ours.target_label == "pos"
    # Unlike the [PAD] baseline, a zero baseline gives [CLS]/[SEP] attributions too.
    assert abs(ours.scores[0]) > 0


def test_text_baseline_is_fitted_to_the_input(classifier, tokenizer):
    text, other = "这家酒店很干净", "不好"     # baseline shorter: padded with [PAD]
    ours = attribute(classifier, tokenizer, text, baseline="text", baseline_text=other, n_steps=12)
    ids = tokenizer.encode(text)[0]
    other_ids = tokenizer.encode(other)[0][1:-1]
    expect = torch.tensor([[ids[0], *other_ids, *[tokenizer.pad_id] * (len(ids) - 2 - len(other_ids)), ids[-1]]])
    theirs, delta = captum_lig(classifier, tokenizer, [text], [ours.target], baseline_ids=expect, n_steps=12)
    np.testing.assert_allclose(ours.scores, theirs[0].double().sum(-1).numpy(), atol=1e-4)
    assert ours.delta == pytest.approx(abs(float(delta)), abs=1e-5)
    # A longer baseline text is cut to the input's length; [SEP] stays at the input's end.
    short = attribute(classifier, tokenizer, "不好", baseline="text", baseline_text=text, n_steps=12)
    assert len(short.scores) == 4 and short.scores[-1] == 0.0


# --- the properties of IG itself -----------------------------------------------------------------
def test_completeness_at_50_gauss_legendre_steps(classifier, tokenizer):
    results = attribute_batch(classifier, tokenizer, TEXTS + ["服务很好，价格便宜", "快递太慢，客服也不回"], n_steps=50)
    for r in results:
        assert abs(r.f_input - r.f_baseline) > 1e-2                          # a real difference to explain
        assert r.delta < 1e-4, r.delta
        assert sum(r.scores) == pytest.approx(r.f_input - r.f_baseline, abs=1e-4)
        # [PAD] baseline keeps [CLS]/[SEP]: their embeddings equal the baseline's, so exactly 0.
        assert r.scores[0] == 0.0 and r.scores[-1] == 0.0
        assert all(n >= abs(s) / math.sqrt(32) - 1e-12 for s, n in zip(r.scores, r.norms))


def test_more_steps_shrink_the_riemann_delta(classifier, tokenizer):
    deltas = [attribute(classifier, tokenizer, TEXTS[0], rule="riemann_left", n_steps=n).delta for n in (4, 16, 64)]
    assert deltas[0] > deltas[1] > deltas[2]


def test_internal_batch_size_does_not_change_results(classifier, tokenizer):
    # 13 steps in chunks of 8 rows: chunks end mid-text, and the three equal-length texts share chunks.
    texts = TEXTS + ["服务很好", "快递太慢", "价格便宜"]
    full = attribute_batch(classifier, tokenizer, texts, n_steps=13, internal_batch_size=10_000)
    chunked = attribute_batch(classifier, tokenizer, texts, n_steps=13, internal_batch_size=8)
    auto = attribute_batch(classifier, tokenizer, texts, n_steps=13)          # TOKENS_PER_PASS
    assert len(full) == len(chunked) == len(auto) == 6
    for a, b, c in zip(full, chunked, auto):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6, rtol=0)
        np.testing.assert_allclose(a.norms, b.norms, atol=1e-6, rtol=0)
        np.testing.assert_allclose(a.scores, c.scores, atol=1e-6, rtol=0)
        assert a.delta == pytest.approx(b.delta, abs=1e-6)


def test_batch_equals_one_by_one(classifier, tokenizer):
    texts = TEXTS + ["服务很好", "快递太慢"]
    together = attribute_batch(classifier, tokenizer, texts, n_steps=10, target=[None, 0, 1, 2, None])
    for text, r, t in zip(texts, together, [None, 0, 1, 2, None]):
        alone = attribute(classifier, tokenizer, text, n_steps=10, target=t)
        np.testing.assert_allclose(r.scores, alone.scores, atol=1e-6, rtol=0)
        assert (r.label, r.target, r.tokens) == (alone.label, alone.target, alone.tokens)


def test_linear_attention_model(make_model, tokenizer):
    model = make_model(num_labels=2, initializer_range=0.3, attention="linear")
    results = attribute_batch(model, tokenizer, TEXTS, n_steps=50, internal_batch_size=16)
    theirs, _ = captum_lig(model, tokenizer, TEXTS, [r.target for r in results], n_steps=50)
    for i, r in enumerate(results):
        assert r.delta < 1e-4
        np.testing.assert_allclose(r.scores, theirs[i, :len(r.tokens)].double().sum(-1).numpy(), atol=1e-4)


# --- targets, model state, result shape -----------------------------------------------------------
def test_target_default_is_prediction_and_can_be_named(classifier, tokenizer):
    with torch.no_grad():
        ids, seg = tokenizer.encode(TEXTS[0])
        probs = classifier(torch.tensor([ids]), torch.tensor([seg])).class_logits.softmax(-1)[0]
    r = attribute(classifier, tokenizer, TEXTS[0], n_steps=8)
    assert r.label_id == r.target == int(probs.argmax())
    assert r.prob == pytest.approx(float(probs.max()), abs=1e-6) and r.f_input == pytest.approx(r.prob, abs=1e-6)
    other = (r.target + 1) % 3
    for given in (other, ["neg", "neu", "pos"][other], str(other)):
        named = attribute(classifier, tokenizer, TEXTS[0], target=given, n_steps=8)
        assert named.target == other and named.label_id == r.label_id
        assert named.f_input == pytest.approx(float(probs[other]), abs=1e-6)
    per_text = attribute_batch(classifier, tokenizer, TEXTS, target=[0, "pos", None], n_steps=4)
    assert [t.target for t in per_text][:2] == [0, 2]


def test_weights_and_mode_are_left_alone(classifier, tokenizer):
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    classifier.train()
    attribute_batch(classifier, tokenizer, TEXTS, n_steps=6)
    assert classifier.training
    assert all(torch.equal(before[k], v) for k, v in classifier.state_dict().items())
    assert all(p.grad is None for p in classifier.parameters())


def test_dropout_is_off_while_attributing(make_model, tokenizer):
    model = make_model(num_labels=2, initializer_range=0.3, hidden_dropout_prob=0.3).train()
    a = attribute(model, tokenizer, TEXTS[0], n_steps=10)
    b = attribute(model, tokenizer, TEXTS[0], n_steps=10)
    assert a.scores == b.scores and a.delta < 1e-3


def test_result_to_dict_and_truncation(classifier, tokenizer):
    r = attribute(classifier, tokenizer, "很好" * 100, n_steps=4, max_length=16)
    assert len(r.tokens) == len(r.token_ids) == len(r.scores) == len(r.norms) == 16
    d = r.to_dict()
    assert {"label", "prob", "tokens", "scores", "delta", "target", "f_input", "f_baseline"} <= d.keys()
    assert d["tokens"][0] == "[CLS]" and d["tokens"][-1] == "[SEP]"
    assert isinstance(r, Attribution) and all(isinstance(s, float) for s in d["scores"])


# --- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, message", [
    ({"target": 3}, ValueError, r"target 3 is out of range: the model has 3 labels \(ids 0..2: neg, neu, pos\)"),
    ({"target": -1}, ValueError, "target -1 is out of range"),
    ({"target": "happy"}, ValueError, "unknown target label 'happy'; the model's labels are: neg, neu, pos"),
    ({"rule": "simpson"}, ValueError, "unknown integration rule"),
    ({"n_steps": 0}, ValueError, "n_steps must be a positive integer"),
    ({"quantity": "loss"}, ValueError, "unknown quantity 'loss'"),
    ({"baseline": "mask"}, ValueError, "unknown baseline 'mask'"),
    ({"baseline": "text"}, ValueError, "baseline_text is required"),
    ({"internal_batch_size": 0}, ValueError, "internal_batch_size must be a positive integer"),
])
def test_bad_options(classifier, tokenizer, kwargs, error, message):
    with pytest.raises(error, match=message):
        attribute(classifier, tokenizer, TEXTS[0], **kwargs)


def test_bad_texts_and_models(classifier, tokenizer, make_model):
    with pytest.raises(ValueError, match="text is empty"):
        attribute(classifier, tokenizer, "   ")
    with pytest.raises(ValueError, match="text 1 is empty"):
        attribute_batch(classifier, tokenizer, ["好", ""])
    with pytest.raises(TypeError, match="list of texts"):
        attribute_batch(classifier, tokenizer, "好")
    with pytest.raises(ValueError, match="2 texts but 3 targets"):
        attribute_batch(classifier, tokenizer, ["好", "坏"], target=[0, 1, 2])
    with pytest.raises(ValueError, match="no classifier head"):
        attribute(make_model(), tokenizer, "好")


def test_attributor_from_directory(tiny_model_dir, make_model, tmp_path):
    attributor = Attributor.from_pretrained(tiny_model_dir(num_labels=2, initializer_range=0.3))
    r = attributor.attribute("服务很好", n_steps=8)
    assert attributor.labels == ["0", "1"] and r.delta < 1e-3
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Attributor.from_pretrained(tmp_path / "missing")
    mlm = tiny_model_dir("mlm")
    with pytest.raises(ValueError, match="has no classifier head"):
        Attributor.from_pretrained(mlm)
    # A config that claims labels over a checkpoint without classifier weights: a random head.
    meta = json.loads((mlm / "bert4ray.json").read_text())
    meta["model"]["num_labels"] = 2
    (mlm / "bert4ray.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="has no classifier weights"):
        Attributor.from_pretrained(mlm)
