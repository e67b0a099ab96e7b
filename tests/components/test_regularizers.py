"""Regularizers against independent autograd computations; parameters restored bit for bit."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from components.regularizers import RegularizerConfig, _per_example_unit, _project, regularized_step


def classify_loss(model, batch, inputs_embeds):
    out = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"], return_logits=False,
                inputs_embeds=inputs_embeds)
    loss = F.cross_entropy(out.class_logits, batch["labels"])
    return {"loss": loss, "classify": loss, "logits": out.class_logits}


@pytest.fixture
def setup(make_model):
    model = make_model(num_labels=3, seed=1).train()
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(5, 200, (4, 9), generator=g), "segment_ids": torch.zeros(4, 9, dtype=torch.long),
             "attention_mask": torch.ones(4, 9, dtype=torch.long), "labels": torch.tensor([0, 1, 2, 1])}
    return model, batch


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_all_off_is_one_plain_step(setup):
    model, batch = setup
    parts = regularized_step(model, batch, classify_loss, RegularizerConfig(noise_std=0.0))
    ours = grads(model)
    model.zero_grad()
    classify_loss(model, batch, None)["loss"].backward()
    assert parts["loss"] == pytest.approx(parts["classify"])
    for n, g in grads(model).items():
        assert torch.equal(ours[n], g)


def test_gradient_penalty_matches_double_backprop(setup):
    model, batch = setup
    eps = 0.7
    parts = regularized_step(model, batch, classify_loss, RegularizerConfig(gradient_penalty=eps))
    ours = grads(model)
    model.zero_grad()
    with sdpa_kernel([SDPBackend.MATH]):          # fused attention has no second derivative
        E = model.embed(batch["input_ids"], batch["segment_ids"])
        loss = classify_loss(model, batch, E)["loss"]
        (gE,) = torch.autograd.grad(loss, E, create_graph=True)
        gp = 0.5 * eps * (gE ** 2).sum()
        (loss + gp).backward()
    assert parts["gp"] == pytest.approx(float(gp), rel=1e-5)
    for n, g in grads(model).items():
        assert torch.allclose(ours[n], g, atol=1e-6, rtol=1e-5), n


@pytest.mark.parametrize("kind", ["fgm", "pgd"])
def test_embedding_output_adversaries_match_an_independent_computation(setup, kind):
    model, batch = setup
    before = snapshot(model)
    cfg = RegularizerConfig(fgm_epsilon=0.5) if kind == "fgm" else RegularizerConfig(pgd_epsilon=0.5, pgd_steps=3,
                                                                                   pgd_alpha=0.4)
    parts = regularized_step(model, batch, classify_loss, cfg)
    ours = grads(model)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    # Independent: find r by hand, then backprop L(E) + L(E + r) with r fixed.
    model.zero_grad()
    E0 = model.embed(batch["input_ids"], batch["segment_ids"]).detach()
    r = torch.zeros_like(E0)
    steps, step = (1, 0.5) if kind == "fgm" else (3, 0.4 * 0.5)
    for _ in range(steps):
        probe = (E0 + r).requires_grad_(True)
        (g,) = torch.autograd.grad(classify_loss(model, batch, probe)["loss"], probe)
        unit = g / g.flatten(1).norm(dim=1).view(-1, 1, 1)
        r = r + step * unit
        norms = r.flatten(1).norm(dim=1).view(-1, 1, 1)
        r = r * torch.clamp(0.5 / norms, max=1.0)
    assert torch.all(r.flatten(1).norm(dim=1) <= 0.5 + 1e-5)               # inside the ε-ball
    E = model.embed(batch["input_ids"], batch["segment_ids"])
    total = classify_loss(model, batch, E)["loss"] + classify_loss(model, batch, E + r)["loss"]
    total.backward()
    assert parts["loss"] == pytest.approx(total.item(), rel=1e-5)
    for n, g in grads(model).items():
        assert torch.allclose(ours[n], g, atol=1e-6, rtol=1e-4), n


@pytest.mark.parametrize("cfg", [RegularizerConfig(fgm_epsilon=0.3, fgm_target="embedding_weight"),
                                 RegularizerConfig(pgd_epsilon=0.3, pgd_steps=3, pgd_target="embedding_weight")])
def test_weight_adversaries_restore_every_parameter_bit_for_bit(setup, cfg):
    model, batch = setup
    before = snapshot(model)
    parts = regularized_step(model, batch, classify_loss, cfg)
    assert parts["adv_loss"] > 0
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    # FGM: the accumulated gradient equals grad L(W) + grad L(W + ε g/‖g‖) computed independently.
    if cfg.fgm_epsilon:
        ours = grads(model)
        model.zero_grad()
        W = model.embeddings.word_embeddings.weight
        loss = classify_loss(model, batch, None)["loss"]
        (g,) = torch.autograd.grad(loss, W, retain_graph=True)
        loss.backward()
        with torch.no_grad():
            W.add_(0.3 * g / g.norm())
        classify_loss(model, batch, None)["loss"].backward()
        with torch.no_grad():
            W.copy_(before["embeddings.word_embeddings.weight"])
        for n, gr in grads(model).items():
            assert torch.allclose(ours[n], gr, atol=1e-6, rtol=1e-4), n


def test_noise_changes_the_loss_and_vat_is_a_nonnegative_kl(setup):
    model, batch = setup
    plain = regularized_step(model, batch, classify_loss, None)["loss"]
    model.zero_grad()
    torch.manual_seed(3)
    noisy = regularized_step(model, batch, classify_loss, RegularizerConfig(noise_std=0.5))
    assert noisy["noise_loss"] != pytest.approx(plain)
    model.zero_grad()
    vat = regularized_step(model, batch, classify_loss, RegularizerConfig(vat_epsilon=1.0))
    assert vat["vat"] >= 0.0 and vat["loss"] == pytest.approx(vat["task_loss"] + vat["vat"], rel=1e-5)
    model.zero_grad()
    tiny = regularized_step(model, batch, classify_loss, RegularizerConfig(vat_epsilon=1e-9))
    assert tiny["vat"] == pytest.approx(0.0, abs=1e-8)


def test_helpers_and_invalid_configs():
    r = torch.randn(3, 4, 5)
    assert torch.allclose(_per_example_unit(r).flatten(1).norm(dim=1), torch.ones(3))
    assert torch.all(_project(r * 10, 0.5).flatten(1).norm(dim=1) <= 0.5 + 1e-6)
    with pytest.raises(ValueError, match="regularizers.noise_std must be a number >= 0"):
        RegularizerConfig(noise_std=-1)
    with pytest.raises(ValueError, match="regularizers.pgd_steps must be an integer >= 1"):
        RegularizerConfig(pgd_steps=0)
    with pytest.raises(ValueError, match="regularizers.fgm_target must be one of"):
        RegularizerConfig(fgm_target="weights")
    with pytest.raises(ValueError, match="exclusive"):
        RegularizerConfig(fgm_epsilon=1, pgd_epsilon=1)
