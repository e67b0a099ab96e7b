"""Regularizers against independent autograd computations; parameters restored bit for bit."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from components.regularizers import (
    RegularizerConfig,
    _per_example_unit,
    _project,
    regularized_step,
    vat_direction,
)


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


def test_gradient_penalty_at_embedding_output_matches_double_backprop(setup):
    model, batch = setup
    eps = 0.7
    parts = regularized_step(model, batch, classify_loss,
                             RegularizerConfig(gradient_penalty=eps, gradient_penalty_at="embedding_output"))
    ours = grads(model)
    model.zero_grad()
    with sdpa_kernel([SDPBackend.MATH]):          # fused attention has no second derivative
        E = model.embed(batch["input_ids"], batch["segment_ids"])
        loss = classify_loss(model, batch, E)["loss"]
        (gE,) = torch.autograd.grad(loss, E, create_graph=True)
        gp = 0.5 * eps * (gE ** 2).sum()
        (loss + gp).backward()
    assert parts["gp"] == pytest.approx(float(gp.detach()), rel=1e-5)
    for n, g in grads(model).items():
        assert torch.allclose(ours[n], g, atol=1e-6, rtol=1e-5), n


@pytest.fixture
def repeated(make_model):
    """Classification inputs in which tokens repeat within and across examples, and one example is
    padded ([PAD] = 0, the row nn.Embedding never updates)."""
    model = make_model(num_labels=3, seed=2).train()
    ids = torch.tensor([[2, 17, 17, 40, 17, 3], [2, 40, 55, 55, 3, 0], [2, 9, 17, 9, 9, 3]])
    batch = {"input_ids": ids, "segment_ids": torch.zeros_like(ids), "attention_mask": (ids != 0).long(),
             "labels": torch.tensor([0, 2, 2])}      # not one of each: their [CLS] gradients would cancel
    return model, batch


def _seed_penalty(model, batch, eps):
    """The seed post's ½·ε·‖∇_W L‖² over the rows used, written out: the lookup done by indexing,
    the gradient of every occurrence summed into its row by a Python loop."""
    emb = model.embeddings
    ids = batch["input_ids"]
    looked_up = emb.word_embeddings.weight[ids].detach().requires_grad_(True)              # (B, T, H)
    positions = torch.arange(ids.shape[1])[None].expand_as(ids)
    E = emb.LayerNorm(looked_up + emb.position_embeddings(positions) + emb.token_type_embeddings(batch["segment_ids"]))
    (g,) = torch.autograd.grad(classify_loss(model, batch, E)["loss"], looked_up)
    rows: dict[int, torch.Tensor] = {}
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1]):
            token = int(ids[b, t])
            if token != emb.word_embeddings.padding_idx:
                rows[token] = rows.get(token, 0) + g[b, t]
    accumulated = 0.5 * eps * sum(float(r.pow(2).sum()) for r in rows.values())
    per_occurrence = 0.5 * eps * float(g[ids != 0].pow(2).sum())
    return accumulated, per_occurrence, float(g.norm())


def test_gradient_penalty_at_token_embeddings_is_the_seed_formula_and_double_backprop(repeated):
    model, batch = repeated
    eps = 0.7
    parts = regularized_step(model, batch, classify_loss, RegularizerConfig(gradient_penalty=eps))
    ours = grads(model)
    # The seed's formula, from first-order gradients: a row used twice carries both occurrences.
    accumulated, per_occurrence, _ = _seed_penalty(model, batch, eps)
    assert parts["gp"] == pytest.approx(accumulated, rel=1e-5)
    assert abs(per_occurrence - accumulated) > 0.05 * accumulated        # the repeats do matter here
    # Explicit double backpropagation through ∇_W L, W the word-embedding matrix.
    model.zero_grad()
    W = model.embeddings.word_embeddings.weight
    with sdpa_kernel([SDPBackend.MATH]):
        loss = classify_loss(model, batch, None)["loss"]
        (gW,) = torch.autograd.grad(loss, W, create_graph=True)
        gp = 0.5 * eps * gW.pow(2).sum()
        (loss + gp).backward()
    assert parts["gp"] == pytest.approx(float(gp.detach()), rel=1e-5)
    for n, g in grads(model).items():
        assert torch.allclose(ours[n], g, atol=1e-6, rtol=1e-5), n


def test_the_two_penalty_spaces_differ_in_scale(repeated):
    """The LayerNorm after the lookup divides by the summed row's spread (≈ 0.035 here), so ε
    from one space does not carry over to the other."""
    model, batch = repeated
    _, _, at_lookup = _seed_penalty(model, batch, 1.0)
    E = model.embed(batch["input_ids"], batch["segment_ids"])
    (gE,) = torch.autograd.grad(classify_loss(model, batch, E)["loss"], E)
    assert 10 < at_lookup / float(gE.norm()) < 100


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


def _kl(p_logits, q_logits):
    p_log, q_log = F.log_softmax(p_logits, dim=-1), F.log_softmax(q_logits, dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1).mean()


def test_vat_direction_is_the_top_eigenvector_of_the_kl_hessian(make_model):
    """With dropout in the config and the model in train mode, the power iteration still finds the
    top eigenvector of ∇²_r KL(p(E₀) ‖ p(E₀ + r)) at r = 0 (E₀ the dropout-free embedding output),
    from any start (up to sign). The finite probe ξ biases the fixed point by ~ξ²/H, the same way
    for d and −d; at H = 128 and the default ξ = 1 it costs under 0.01 of cosine (0.996 here)."""
    model = make_model(num_labels=5, seed=1, hidden_size=128, intermediate_size=128, hidden_dropout_prob=0.1,
                       attention_probs_dropout_prob=0.1).double().train()
    ids = torch.tensor([[2, 40, 17, 3], [2, 9, 55, 3]])
    batch = {"input_ids": ids, "segment_ids": torch.zeros_like(ids), "attention_mask": torch.ones_like(ids),
             "labels": torch.tensor([0, 3])}
    cfg = RegularizerConfig(vat_epsilon=1.0, vat_iters=30)
    directions = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        _, d = vat_direction(model, batch, classify_loss, cfg.vat_xi, cfg.vat_iters)
        directions.append(d.flatten(1))                                        # (B, T·H)
        assert model.training and all(m.training for m in model.modules())
    # Independent reference: the exact Hessian of the KL in eval mode, eigendecomposed per example.
    model.eval()
    with torch.no_grad():
        E0 = model.embed(ids, batch["segment_ids"])
        clean = classify_loss(model, batch, E0)["logits"]
    with sdpa_kernel([SDPBackend.MATH]):
        hess = torch.autograd.functional.hessian(lambda r: _kl(clean, classify_loss(model, batch, E0 + r)["logits"]),
                                                 torch.zeros_like(E0))
    n = E0[0].numel()
    hess = hess.reshape(2 * n, 2 * n)
    for b in range(2):
        block = hess[b * n:(b + 1) * n, b * n:(b + 1) * n]
        assert float(hess[b * n:(b + 1) * n].abs().sum()) == pytest.approx(float(block.abs().sum()))  # examples apart
        values, vectors = torch.linalg.eigh(block)
        assert values[-2] < 0.9 * values[-1]                                  # a top direction to find
        for d in directions:                   # each seed, whichever sign its start led to
            assert abs(float(d[b] @ vectors[:, -1])) >= 0.99


def test_vat_term_is_the_kl_to_the_clean_distribution_and_modes_are_restored(make_model):
    """Dropout off (so the step's forwards are reproducible here): the logged term and the gradients
    equal vat_weight · KL(p(E₀) ‖ p(E + ε·d)) backpropagated with p(E₀) and d fixed; every module's
    train/eval flag is as before, including one held in eval mode on purpose."""
    model = make_model(num_labels=3, seed=3).train()
    model.layers[0].eval()
    g = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(5, 200, (3, 7), generator=g), "segment_ids": torch.zeros(3, 7, dtype=torch.long),
             "attention_mask": torch.ones(3, 7, dtype=torch.long), "labels": torch.tensor([0, 1, 2])}
    modes = [m.training for m in model.modules()]
    cfg = RegularizerConfig(vat_epsilon=2.0, vat_iters=2, vat_weight=0.5)
    torch.manual_seed(5)
    parts = regularized_step(model, batch, classify_loss, cfg)
    ours = grads(model)
    assert [m.training for m in model.modules()] == modes
    model.zero_grad()
    torch.manual_seed(5)
    clean, d = vat_direction(model, batch, classify_loss, cfg.vat_xi, cfg.vat_iters)
    E = model.embed(batch["input_ids"], batch["segment_ids"])
    task = classify_loss(model, batch, E)["loss"]
    vat = 0.5 * _kl(clean, classify_loss(model, batch, E + 2.0 * d)["logits"])
    (task + vat).backward()
    assert parts["vat"] == pytest.approx(float(vat.detach()), rel=1e-5) and parts["vat"] > 0
    assert parts["loss"] == pytest.approx(float((task + vat).detach()), rel=1e-6)
    for n, gr in grads(model).items():
        assert torch.allclose(ours[n], gr, atol=1e-7, rtol=1e-5), n


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
    with pytest.raises(ValueError, match="regularizers.gradient_penalty_at must be one of token_embeddings"):
        RegularizerConfig(gradient_penalty_at="embeddings")
    with pytest.raises(ValueError, match="exclusive"):
        RegularizerConfig(fgm_epsilon=1, pgd_epsilon=1)
