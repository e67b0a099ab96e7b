"""Generalization regularizers as switches on any training task: Gaussian noise, FGM, PGD,
gradient penalty and virtual adversarial training (VAT).

All act on the embedding output E = model.embed(input_ids, segment_ids) (B, T, H), which the
task's loss_fn receives back as `inputs_embeds`:

- noise:  L(E + σ·N(0, I)) replaces L(E).
- FGM:    r = ε · g / ‖g‖ with g = ∇_E L; the loss is L(E) + L(E + r). The norm is taken per
          example (over that example's T×H block), so an example's perturbation does not shrink
          because another example in the batch has large gradients.
- PGD:    K steps r ← Π_ε(r + α · g_r / ‖g_r‖) (per-example norms; Π_ε projects each example's r
          back onto the ε-ball); the loss is L(E) + L(E + r_K).
- gradient penalty: L + ½·ε·‖∇L‖² by double backpropagation (create_graph), the gradient taken
          where `gradient_penalty_at` says: `token_embeddings` (default, the seed post's and
          bert4keras' space) is the gradient with respect to the word-embedding rows the batch looks
          up, a row used twice summing both occurrences' gradients as ∇_W L does; `embedding_output`
          is ∇_E L. The LayerNorm after the lookup divides by each summed row's standard deviation
          (≈ 0.035 at initialisation), so ‖∇‖ at the token embeddings is ~15–35× ‖∇_E L‖ and the
          penalty ~250–1,000× (measured on randomly initialised models): ε does not carry over
          between the two spaces (README, "Methods: conventions").
- VAT:    d is refined by `vat_iters` power iterations d ← ∇_d KL(p(E₀) ‖ p(E₀ + ξ·d/‖d‖)) from a
          random start, computed with dropout off (eval mode, the modules' own train/eval flags
          restored after) on the dropout-free embedding output E₀, so d follows the top eigenvector
          of the KL's Hessian and not the difference between two dropout masks. The term is then
          vat_weight · KL(p(E₀) ‖ p(E + ε·d/‖d‖)), with the clean p(E₀) detached and the perturbed
          forward run as the step runs (with dropout if the model trains with it); needs "logits".
          ξ and ε are absolute per-example L2 norms on E. A post-LayerNorm row has norm ≈ √H, so an
          example's E has norm ≈ √(T·H) (≈ 90 for T = 64, H = 128): ξ = 1, the default, is a ~1 %
          relative probe, large enough that float32 resolves the KL's change, small enough for its
          quadratic term to dominate.

With `*_target: embedding_weight` FGM/PGD perturb the word-embedding matrix instead (the classic
form): the matrix is saved, perturbed in place, the adversarial loss is backpropagated on its own
(one backward per perturbation) and the matrix is copied back bit for bit. That form needs as many
backward calls as perturbations, which plain PyTorch and DeepSpeed ZeRO-0/1 accept; under ZeRO-2/3,
where every backward also reduces gradients, use the default embedding-output form, which builds
one graph and calls `backward` exactly once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

TARGETS = ("embedding_output", "embedding_weight")
PENALTY_SPACES = ("token_embeddings", "embedding_output")


@dataclass
class RegularizerConfig:
    noise_std: float = 0.0
    """Standard deviation of Gaussian noise added to the embedding output (0 = off)."""
    fgm_epsilon: float = 0.0
    """FGM radius (0 = off)."""
    fgm_target: str = "embedding_output"
    """`embedding_output` (per-example norm, one backward) or `embedding_weight` (classic)."""
    pgd_epsilon: float = 0.0
    """PGD ε-ball radius (0 = off)."""
    pgd_steps: int = 3
    pgd_alpha: float = 0.3
    """PGD step size, as a fraction of ε."""
    pgd_target: str = "embedding_output"
    gradient_penalty: float = 0.0
    """ε in ½·ε·‖∇L‖² (0 = off); the post's ε = 1 is on the `token_embeddings` scale."""
    gradient_penalty_at: str = "token_embeddings"
    """Where ∇L is taken: `token_embeddings` (the rows looked up, the seed post's space) or
    `embedding_output` (E, post-LayerNorm: gradients far smaller, so ε must be far larger)."""
    vat_epsilon: float = 0.0
    """VAT radius, a per-example L2 norm on E (0 = off)."""
    vat_xi: float = 1.0
    """Probe radius of the power iteration, a per-example L2 norm on E (‖E‖ ≈ √(T·H))."""
    vat_iters: int = 1
    vat_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("noise_std", "fgm_epsilon", "pgd_epsilon", "gradient_penalty", "vat_epsilon", "vat_xi",
                     "vat_weight", "pgd_alpha"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise ValueError(f"regularizers.{name} must be a number >= 0, got {value!r}")
        for name in ("pgd_steps", "vat_iters"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"regularizers.{name} must be an integer >= 1, got {value!r}")
        for name in ("fgm_target", "pgd_target"):
            if getattr(self, name) not in TARGETS:
                raise ValueError(f"regularizers.{name} must be one of {', '.join(TARGETS)}, "
                                 f"got {getattr(self, name)!r}")
        if self.gradient_penalty_at not in PENALTY_SPACES:
            raise ValueError(f"regularizers.gradient_penalty_at must be one of {', '.join(PENALTY_SPACES)}, "
                             f"got {self.gradient_penalty_at!r}")
        if self.fgm_epsilon and self.pgd_epsilon:
            raise ValueError("regularizers.fgm_epsilon and regularizers.pgd_epsilon are exclusive: choose one")

    @property
    def active(self) -> bool:
        return any((self.noise_std, self.fgm_epsilon, self.pgd_epsilon, self.gradient_penalty, self.vat_epsilon))


LossFn = Callable[[torch.nn.Module, dict, torch.Tensor | None], dict[str, torch.Tensor]]


def _core(model):
    return getattr(model, "module", model)


def _per_example_unit(g: torch.Tensor) -> torch.Tensor:
    """g / ‖g‖ with the norm over each example's (T, H) block."""
    norm = g.flatten(1).norm(dim=1).clamp_min(1e-12)
    return g / norm.view(-1, *([1] * (g.dim() - 1)))


def _project(r: torch.Tensor, eps: float) -> torch.Tensor:
    """Project each example's perturbation onto the ε-ball."""
    norm = r.flatten(1).norm(dim=1).clamp_min(1e-12)
    scale = torch.clamp(eps / norm, max=1.0)
    return r * scale.view(-1, *([1] * (r.dim() - 1)))


def _kl_logits(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) for categorical distributions given by logits over the last dim, mean over rows;
    in float32 at least (half-precision logits are promoted, float64 stays float64)."""
    dtype = torch.promote_types(p_logits.dtype, torch.float32)
    p_log = F.log_softmax(p_logits.to(dtype), dim=-1)
    q_log = F.log_softmax(q_logits.to(dtype), dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1).mean()


def _floats(parts: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.detach()) for k, v in parts.items() if k != "logits" and v.dim() == 0}


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off inside; every module's own train/eval flag is put back afterwards (a model may
    hold frozen submodules in eval mode on purpose)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _logits(loss_fn: LossFn, model, batch: dict, embeds: torch.Tensor) -> torch.Tensor:
    parts = loss_fn(model, batch, embeds)
    if "logits" not in parts:
        raise ValueError("regularizers.vat_epsilon needs the task's loss_fn to return 'logits'")
    return parts["logits"]


def vat_direction(model, batch: dict, loss_fn: LossFn, xi: float, iters: int,
                  start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean logits p(E₀), d): the dropout-free distribution and VAT's adversarial direction after
    `iters` power iterations from `start` (default N(0, I)), d of unit norm per example. Runs in
    eval mode: with dropout on, two forwards differ by their masks, a gradient that does not shrink
    with ξ and drowns the curvature term (~ξ·λ), so d would follow the masks, not the model."""
    core = _core(model)
    with _eval_mode(model):
        with torch.no_grad():
            clean_embeds = core.embed(batch["input_ids"], batch.get("segment_ids"))     # (B, T, H)
            clean = _logits(loss_fn, model, batch, clean_embeds)
        d = torch.randn_like(clean_embeds) if start is None else start.to(clean_embeds)
        for _ in range(iters):
            d = (xi * _per_example_unit(d)).requires_grad_(True)
            kl = _kl_logits(clean, _logits(loss_fn, model, batch, clean_embeds + d))
            (d,) = torch.autograd.grad(kl, d)
    return clean, _per_example_unit(d)


def regularized_step(model, batch: dict, loss_fn: LossFn, cfg: RegularizerConfig | None,
                     backward: Callable[[torch.Tensor], None] = lambda t: t.backward()) -> dict[str, float]:
    """Run the forward(s) of one micro-batch with the configured regularizers and call `backward`
    on the total. Returns the logged parts as floats ("loss" is the total that was minimised)."""
    if cfg is None or not cfg.active:
        parts = loss_fn(model, batch, None)
        backward(parts["loss"])
        return _floats(parts)
    if cfg.fgm_epsilon and cfg.fgm_target == "embedding_weight":
        return _weight_adversarial(model, batch, loss_fn, cfg, backward, steps=1, eps=cfg.fgm_epsilon, alpha=1.0)
    if cfg.pgd_epsilon and cfg.pgd_target == "embedding_weight":
        return _weight_adversarial(model, batch, loss_fn, cfg, backward, steps=cfg.pgd_steps,
                                   eps=cfg.pgd_epsilon, alpha=cfg.pgd_alpha)

    if cfg.gradient_penalty:
        # Double backpropagation: PyTorch's fused CPU/GPU attention kernels have no second
        # derivative, so this step records the attention in plain (math) operations.
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel([SDPBackend.MATH]):
            return _embedding_step(model, batch, loss_fn, cfg, backward)
    return _embedding_step(model, batch, loss_fn, cfg, backward)


def _embed_with_lookup(core, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(E, X): the embedding output and the word-embedding rows it was computed from, X captured by
    a forward hook so the model's own embedding code runs unchanged."""
    seen: list[torch.Tensor] = []
    handle = core.embeddings.word_embeddings.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        embeds = core.embed(batch["input_ids"], batch.get("segment_ids"))
    finally:
        handle.remove()
    return embeds, seen[0]


def token_embedding_sq_norm(g_lookup: torch.Tensor, input_ids: torch.Tensor, pad_id: int | None) -> torch.Tensor:
    """‖∇_W L‖² over the rows used, from the gradient at each lookup (B, T, H): the occurrences of a
    token are summed into its row (as the gradient with respect to the matrix sums them) and the
    padding row, which nn.Embedding never updates, is left out. Differentiable (create_graph)."""
    ids = input_ids.reshape(-1)
    rows, inverse = torch.unique(ids, return_inverse=True)
    g = g_lookup.reshape(ids.numel(), -1)
    per_row = g.new_zeros(rows.numel(), g.shape[1]).index_add(0, inverse, g)          # (rows, H)
    if pad_id is not None:
        per_row = per_row[rows != pad_id]
    return per_row.pow(2).sum()


def _embedding_step(model, batch, loss_fn, cfg, backward) -> dict[str, float]:
    core = _core(model)
    at_tokens = bool(cfg.gradient_penalty) and cfg.gradient_penalty_at == "token_embeddings"
    if at_tokens:
        embeds, lookup = _embed_with_lookup(core, batch)                                 # (B, T, H) each
    else:
        embeds = core.embed(batch["input_ids"], batch.get("segment_ids"))               # (B, T, H)
    extra: dict[str, torch.Tensor] = {}
    if cfg.noise_std:
        noisy = embeds + cfg.noise_std * torch.randn_like(embeds)
        parts = loss_fn(model, batch, noisy)
        extra["noise_loss"] = parts["loss"]
    else:
        parts = loss_fn(model, batch, embeds)
    loss = parts["loss"]
    total = loss
    if cfg.fgm_epsilon or cfg.pgd_epsilon or cfg.gradient_penalty:
        wrt = [embeds, lookup] if at_tokens else [embeds]
        grads = torch.autograd.grad(loss, wrt, retain_graph=True, create_graph=bool(cfg.gradient_penalty))
        if cfg.gradient_penalty:
            sq = (token_embedding_sq_norm(grads[1], batch["input_ids"], core.embeddings.word_embeddings.padding_idx)
                  if at_tokens else grads[0].pow(2).sum())
            extra["gp"] = 0.5 * cfg.gradient_penalty * sq
            total = total + extra["gp"]
        if cfg.fgm_epsilon or cfg.pgd_epsilon:
            extra["adv_loss"] = _adversarial_loss(model, batch, loss_fn, cfg, embeds, grads[0].detach())
            total = total + extra["adv_loss"]
    if cfg.vat_epsilon:
        clean, d = vat_direction(model, batch, loss_fn, cfg.vat_xi, cfg.vat_iters)
        extra["vat"] = cfg.vat_weight * _kl_logits(clean, _logits(loss_fn, model, batch, embeds + cfg.vat_epsilon * d))
        total = total + extra["vat"]
    backward(total)
    out = _floats(parts)
    out.update(_floats(extra))
    out["task_loss"] = float(loss.detach())
    out["loss"] = float(total.detach())
    return out


def _adversarial_loss(model, batch, loss_fn, cfg, embeds: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """L(E + r) with r from FGM (one step of ε) or PGD (K projected steps), g = ∇_E L at E."""
    if cfg.fgm_epsilon:
        return loss_fn(model, batch, embeds + cfg.fgm_epsilon * _per_example_unit(g))["loss"]
    r, gr, base = torch.zeros_like(embeds), g, embeds.detach()
    step = cfg.pgd_alpha * cfg.pgd_epsilon
    for k in range(cfg.pgd_steps):
        if k:                                # the gradient at the current perturbation
            probe = (base + r).requires_grad_(True)
            (gr,) = torch.autograd.grad(loss_fn(model, batch, probe)["loss"], probe)
        r = _project(r + step * _per_example_unit(gr), cfg.pgd_epsilon)
    return loss_fn(model, batch, embeds + r.detach())["loss"]


def _weight_adversarial(model, batch, loss_fn, cfg, backward, steps: int, eps: float, alpha: float):
    """Classic FGM/PGD on the word-embedding matrix W: backward L(W); move W along its gradient
    (`steps` normalised steps of alpha·ε, projected onto the ε-ball: FGM is one step of ε);
    backward L(W + r); copy W back bit for bit."""
    weight = _core(model).embeddings.word_embeddings.weight
    parts = loss_fn(model, batch, None)
    (g,) = torch.autograd.grad(parts["loss"], weight, retain_graph=True)
    backward(parts["loss"])
    saved = weight.detach().clone()
    r = torch.zeros_like(saved)
    adv = None
    try:
        for k in range(steps):
            if k:
                with torch.no_grad():
                    weight.copy_(saved + r)
                (g,) = torch.autograd.grad(loss_fn(model, batch, None)["loss"], weight)
            norm = g.norm()
            if norm == 0 or not torch.isfinite(norm):
                break
            r = r + alpha * eps * g / norm
            if r.norm() > eps:
                r = r * (eps / r.norm())
        with torch.no_grad():
            weight.copy_(saved + r)
        adv = loss_fn(model, batch, None)["loss"]
        backward(adv)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    out = _floats(parts)
    out["task_loss"] = out["loss"]
    out["adv_loss"] = float(adv.detach())
    out["loss"] = out["task_loss"] + out["adv_loss"]
    return out
