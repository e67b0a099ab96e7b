"""MGS update math against direct float64 computations (torch.distributions, plain Python sums)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

from components.mgs import (
    Candidate,
    MGSConfig,
    draw_candidates,
    log_q,
    log_weights,
    movable,
    noise_scales,
    perturbation,
    update_direction,
    weight_entropy,
)


@pytest.fixture
def grads():
    torch.manual_seed(0)
    return [torch.randn(3, 4) * 0.01, torch.randn(5) * 0.2, torch.randn(2, 2, 2) * 1e-3]


def _direct_log_q(delta, grads, sigmas, mixture, density):
    """The mixture density of the flattened vector, each component a product of Normals (float64)."""
    d = torch.cat([x.double().flatten() for x in delta])
    g = torch.cat([x.double().flatten() for x in grads])
    if density == "proposal":
        s = torch.cat([torch.full((x.numel(),), sig, dtype=torch.float64) for x, sig in zip(grads, sigmas)])
    else:
        s = torch.ones_like(d)
    guided = Normal(-g, s).log_prob(d).sum().item()
    noise = Normal(torch.zeros_like(g), s).log_prob(d).sum().item()
    terms = []
    if mixture > 0:
        terms.append(math.log(mixture) + guided)
    if mixture < 1:
        terms.append(math.log(1 - mixture) + noise)
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


def test_noise_scales_are_mean_abs_gradient_per_tensor(grads):
    sigmas = noise_scales(grads, 2.0)
    for g, s in zip(grads, sigmas):
        assert s == pytest.approx(2.0 * float(g.abs().mean()), rel=1e-6)
    assert noise_scales([torch.zeros(3), torch.full((2,), 0.5)], 1.0) == [0.0, pytest.approx(0.5)]


@pytest.mark.parametrize("density", ["unit", "proposal"])
@pytest.mark.parametrize("mixture", [0.5, 0.0, 1.0])
@pytest.mark.parametrize("guided", [True, False])
def test_zero_gradient_tensors_are_not_proposed(grads, density, mixture, guided):
    """σ = 0 and Δ = 0 for a tensor with zero gradient, and log q is the mixture density of the
    other tensors alone: today's formula (torch.distributions) over those tensors, same draws."""
    full = [torch.zeros(4, 4), grads[0], torch.zeros(6), grads[1], grads[2]]
    sigmas = noise_scales(full, 0.7)
    assert sigmas[0] == 0.0 and sigmas[2] == 0.0 and all(s > 0 for k, s in enumerate(sigmas) if k not in (0, 2))
    delta = perturbation(full, sigmas, Candidate(seed=9, guided=guided))
    assert torch.equal(delta[0], torch.zeros(4, 4)) and torch.equal(delta[2], torch.zeros(6))
    assert all(float(d.abs().sum()) > 0 for k, d in enumerate(delta) if k not in (0, 2))
    rest = [1, 3, 4]
    ours = log_q(delta, full, sigmas, mixture, density)
    direct = _direct_log_q([delta[k] for k in rest], [full[k] for k in rest], [sigmas[k] for k in rest],
                           mixture, density)
    assert ours == pytest.approx(direct, rel=1e-12, abs=1e-9)
    log_w = torch.log(torch.tensor([0.6, 0.4], dtype=torch.float64))
    cands = [Candidate(3, True), Candidate(4, False)]
    direction = update_direction(log_w, full, sigmas, cands)
    assert not direction[0].any() and not direction[2].any()


def test_movable_matches_name_patterns():
    names = ["mlm_bias", "embeddings.word_embeddings.weight", "layers.0.query.weight", "layers.1.query.weight",
             "pooler.weight"]
    assert movable(names, []) == [True] * 5
    assert movable(names, ["layers.1.*", "mlm_*"]) == [True, False, False, True, False]
    with pytest.raises(ValueError, match="'layer.*' match no parameter name"):
        movable(names, ["layers.*", "layer.*"])


def test_perturbation_is_regenerated_from_its_seed(grads):
    sigmas = noise_scales(grads, 1.0)
    a = perturbation(grads, sigmas, Candidate(seed=123, guided=True))
    b = perturbation(grads, sigmas, Candidate(seed=123, guided=True))
    noise = perturbation(grads, sigmas, Candidate(seed=123, guided=False))
    for x, y, n, g in zip(a, b, noise, grads):
        assert torch.equal(x, y)
        torch.testing.assert_close(x, n - g)                         # guided = the same ε shifted by −g
    other = perturbation(grads, sigmas, Candidate(seed=124, guided=False))
    assert not torch.equal(other[0], noise[0])


def test_noise_has_the_per_tensor_scale():
    g = [torch.full((200_000,), 0.3), torch.full((200_000,), -0.001)]
    sigmas = noise_scales(g, 1.0)
    eps = perturbation(g, sigmas, Candidate(7, guided=False))
    assert float(eps[0].std()) == pytest.approx(0.3, rel=0.02)
    assert float(eps[1].std()) == pytest.approx(0.001, rel=0.02)
    assert abs(float(eps[0].mean())) < 0.01


@pytest.mark.parametrize("density", ["unit", "proposal"])
@pytest.mark.parametrize("mixture", [0.5, 0.0, 1.0, 0.3])
@pytest.mark.parametrize("guided", [True, False])
def test_log_q_equals_direct_float64(grads, density, mixture, guided):
    sigmas = noise_scales(grads, 0.7)
    delta = perturbation(grads, sigmas, Candidate(seed=5, guided=guided))
    ours = log_q(delta, grads, sigmas, mixture, density)
    assert ours == pytest.approx(_direct_log_q(delta, grads, sigmas, mixture, density), rel=1e-12, abs=1e-9)


def test_weights_equal_direct_float64():
    costs, cost, beta = [0.7, 0.5, 0.9, 0.55], 0.6, 3.0
    lqs = [-10.2, -11.7, -9.9, -10.05]
    ours = log_weights(cost, costs, lqs, beta).exp().tolist()
    raw = [math.exp(beta * (cost - c) - lq) for c, lq in zip(costs, lqs)]
    direct = [r / math.fsum(raw) for r in raw]
    assert ours == pytest.approx(direct, rel=1e-12)
    assert sum(ours) == pytest.approx(1.0, abs=1e-12)


def test_weights_stay_finite_for_huge_log_densities():
    lqs = [-4.0e6, -4.0e6 + 3.0, -4.0e6 - 2.0]                       # millions of dimensions
    w = log_weights(0.5, [0.5, 0.5, 0.5], lqs, 1.0).exp()
    direct = torch.tensor([math.exp(-x - 4.0e6) for x in lqs], dtype=torch.float64)
    torch.testing.assert_close(w, direct / direct.sum())


def test_large_beta_update_tends_to_the_best_candidate(grads):
    sigmas = noise_scales(grads, 1.0)
    cands = draw_candidates(MGSConfig(num_candidates=4), step_seed=11)
    costs = [0.8, 0.35, 0.6, 0.7]
    lqs = [log_q(perturbation(grads, sigmas, c), grads, sigmas, 0.5) for c in cands]
    best = perturbation(grads, sigmas, cands[1])
    gaps = []
    for beta in (1.0, 10.0, 100.0, 1000.0):
        direction = update_direction(log_weights(0.6, costs, lqs, beta), grads, sigmas, cands)
        gaps.append(sum(float((d - b).norm()) for d, b in zip(direction, best)))
    assert gaps == sorted(gaps, reverse=True)
    assert gaps[-1] < 1e-9


def test_update_direction_is_the_weighted_sum(grads):
    sigmas = noise_scales(grads, 1.0)
    cands = draw_candidates(MGSConfig(num_candidates=3, mixture=0.5), step_seed=2)
    log_w = torch.log(torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64))
    direction = update_direction(log_w, grads, sigmas, cands)
    deltas = [perturbation(grads, sigmas, c) for c in cands]
    for t, d in enumerate(direction):
        expected = sum(w * deltas[k][t] for k, w in enumerate([0.2, 0.5, 0.3]))
        torch.testing.assert_close(d, expected)


def test_candidates_are_stratified_over_the_mixture():
    cands = draw_candidates(MGSConfig(num_candidates=4, mixture=0.5), step_seed=0)
    assert [c.guided for c in cands] == [True, True, False, False]
    assert len({c.seed for c in cands}) == 4
    assert not any(c.guided for c in draw_candidates(MGSConfig(num_candidates=4, mixture=0.0), 0))
    assert draw_candidates(MGSConfig(), 3) == draw_candidates(MGSConfig(), 3)


def test_weight_entropy_bounds():
    assert weight_entropy(torch.log(torch.full((4,), 0.25, dtype=torch.float64))) == pytest.approx(math.log(4))
    assert weight_entropy(torch.tensor([0.0, -math.inf, -math.inf], dtype=torch.float64)) == 0.0


@pytest.mark.parametrize("bad", [dict(num_candidates=0), dict(beta=-1.0), dict(noise_scale=0.0),
                                 dict(mixture=1.5), dict(density="exact"), dict(parameters=["pooler.*", ""])])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        MGSConfig(**bad).check()
