"""MGS, MLE-guided parameter search (Welleck & Cho, AAAI 2021): derivative-free descent on a
sequence-level cost C(θ) (1 − BLEU, 1 − F1, ...) whose proposals are guided by the MLE gradient.

One step, with g the MLE gradient at θ:

    σ_t       = noise_scale · mean|g_t|                     one scale per parameter tensor t
    Δ_k       = −g + ε_k   (MLE-guided component)   or   Δ_k = ε_k   (noise component),  ε_k ~ N(0, σ²)
    log q(Δ)  = log( π · N(Δ; −g, σ²) + (1 − π) · N(Δ; 0, σ²) )     the proposal mixture, π = `mixture`
    log w_k   = log softmax_k( β · (C(θ) − C(θ + Δ_k)) − log q(Δ_k) )
    update    = Σ_k w_k Δ_k,   handed to the optimizer as the gradient −update

A tensor the MLE gradient never reaches (g_t = 0, e.g. SimBERT's pooler under the seq2seq loss) gets
σ_t = 0 and Δ_t = 0 in every candidate and is left out of log q: MGS leaves it exactly as it was, as
the authors' code does. `parameters` (glob patterns of parameter names) restricts MGS further: the
gradient of every other tensor is zeroed before the proposals, so the same rule leaves it alone.

Every Δ_k is a function of (g, σ, seed_k, component_k): evaluators regenerate it from its seed, so a
candidate travels as two numbers, never as a copy of the model. The K candidates are drawn
stratified from the mixture: round(K·π) from the guided component, the rest from the noise one
(π = 0 is the noise-only ablation).

`density` says how log q is evaluated. `proposal` uses the Gaussians' own per-tensor σ: the exact
proposal density. In millions of dimensions its value varies between candidates by ~√D nats (the
χ² spread of |ε/σ|²) and drowns the cost term, so the weights follow the noise, not C. `unit`
evaluates the same mixture with unit variance (the convention of the authors' implementation):
with σ ≪ 1 the term is nearly equal across candidates and the cost decides. Both are exact
computations of what they name; `unit` is the default.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import torch

DENSITIES = ("unit", "proposal")
_LOG_2PI = math.log(2 * math.pi)


@dataclass
class MGSConfig:
    num_candidates: int = 4
    """K: candidates Δ_k per step."""
    beta: float = 1.0
    """Inverse temperature of the cost improvement in the weights (large: the best candidate wins)."""
    noise_scale: float = 1.0
    """σ_t = noise_scale · mean|g_t| for every parameter tensor t."""
    mixture: float = 0.5
    """π: the share of candidates from the MLE-guided component N(−g, σ²); 0 = noise only."""
    density: str = "unit"
    """How log q is evaluated: `unit` variance (default) or the `proposal`'s own σ (see above)."""
    parameters: list[str] = field(default_factory=list)
    """Glob patterns of the parameter names MGS may change, e.g. ["layers.*", "mlm_*"]; empty = all.
    Tensors outside them, and tensors with zero MLE gradient, keep their values exactly."""

    def check(self) -> None:
        if not (isinstance(self.num_candidates, int) and self.num_candidates >= 1):
            raise ValueError(f"num_candidates must be an integer >= 1, got {self.num_candidates!r}")
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0, got {self.beta!r}")
        if not self.noise_scale > 0:
            raise ValueError(f"noise_scale must be > 0, got {self.noise_scale!r}")
        if not 0.0 <= self.mixture <= 1.0:
            raise ValueError(f"mixture must be in [0, 1], got {self.mixture!r}")
        if self.density not in DENSITIES:
            raise ValueError(f"density must be one of {', '.join(DENSITIES)}, got {self.density!r}")
        if not all(isinstance(p, str) and p for p in self.parameters):
            raise ValueError(f"parameters must be a list of name patterns, got {self.parameters!r}")


@dataclass(frozen=True)
class Candidate:
    seed: int
    guided: bool
    """True: Δ = −g + ε (MLE-guided component); False: Δ = ε."""


def draw_candidates(config: MGSConfig, step_seed: int) -> list[Candidate]:
    """K candidates, stratified over the mixture, with seeds derived from the step's seed."""
    guided = round(config.num_candidates * config.mixture)
    gen = torch.Generator("cpu").manual_seed(step_seed)
    seeds = torch.randint(0, 2**62, (config.num_candidates,), generator=gen, device="cpu").tolist()
    return [Candidate(int(s), k < guided) for k, s in enumerate(seeds)]


def movable(names: Sequence[str], patterns: Sequence[str]) -> list[bool]:
    """Which parameters MGS may change: those whose name matches one of `patterns` (all when
    there are none). A pattern that matches nothing is an error, not a silent no-op."""
    if not patterns:
        return [True] * len(names)
    unmatched = [p for p in patterns if not any(fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise ValueError(f"mgs.parameters: {', '.join(map(repr, unmatched))} match no parameter name "
                         f"(names look like {', '.join(names[:3])}, ...)")
    return [any(fnmatchcase(n, p) for p in patterns) for n in names]


def noise_scales(grads: Sequence[torch.Tensor], noise_scale: float) -> list[float]:
    """σ_t = noise_scale · mean|g_t|: 0 for a tensor with zero gradient, which MGS then leaves alone
    (a positive σ there would only add noise that the cost may never see, e.g. the pooler's)."""
    return [noise_scale * float(g.abs().mean()) if g.numel() else 0.0 for g in grads]


def perturbation(grads: Sequence[torch.Tensor], sigmas: Sequence[float], candidate: Candidate) -> list[torch.Tensor]:
    """Δ of one candidate, regenerated from its seed: the same on every process for the same inputs.
    Δ_t = 0 where σ_t = 0; such tensors draw nothing from the candidate's stream. The stream is a
    CPU generator on purpose (a GPU one draws other numbers): Δ is drawn on the host, then moved
    to its parameter's device and dtype."""
    gen = torch.Generator("cpu").manual_seed(candidate.seed)
    out = []
    for g, s in zip(grads, sigmas):
        if s == 0:
            out.append(torch.zeros_like(g))
            continue
        eps = torch.randn(g.shape, generator=gen, dtype=torch.float32, device="cpu").mul_(s)
        eps = eps.to(device=g.device, dtype=g.dtype)
        out.append(eps - g if candidate.guided else eps)
    return out


def log_q(delta: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], sigmas: Sequence[float],
          mixture: float, density: str = "unit") -> float:
    """log of the proposal mixture density at Δ, in float64, over the tensors with σ > 0 (a tensor
    with σ = 0 is not proposed: its Δ is 0 with certainty and has no density)."""
    if density not in DENSITIES:
        raise ValueError(f"density must be one of {', '.join(DENSITIES)}, got {density!r}")
    guided_sq = noise_sq = log_norm = 0.0
    dims = 0
    for d, g, s in zip(delta, grads, sigmas):
        if s == 0:
            continue
        scale = s if density == "proposal" else 1.0
        x = d.double().flatten()
        noise_sq += float(torch.dot(x, x)) / scale ** 2
        x += g.double().flatten()                                   # Δ + g, in place: one float64 copy
        guided_sq += float(torch.dot(x, x)) / scale ** 2
        log_norm -= d.numel() * math.log(scale)
        dims += d.numel()
    log_norm -= 0.5 * dims * _LOG_2PI
    parts = []
    if mixture > 0:
        parts.append(math.log(mixture) - 0.5 * guided_sq + log_norm)
    if mixture < 1:
        parts.append(math.log1p(-mixture) - 0.5 * noise_sq + log_norm)
    top = max(parts)
    return top + math.log(math.fsum(math.exp(p - top) for p in parts))


def log_weights(cost: float, candidate_costs: Sequence[float], log_qs: Sequence[float], beta: float) -> torch.Tensor:
    """log w_k = log softmax_k(β (C(θ) − C(θ + Δ_k)) − log q(Δ_k)), float64."""
    c = torch.tensor(list(candidate_costs), dtype=torch.float64, device="cpu")         # host scalars
    scores = beta * (cost - c) - torch.tensor(list(log_qs), dtype=torch.float64, device="cpu")
    return scores - torch.logsumexp(scores, dim=0)


def weight_entropy(log_w: torch.Tensor) -> float:
    """Entropy of the candidate weights in nats: log K when uniform, 0 when one candidate takes all."""
    w = log_w.exp()
    return float(-(w * torch.where(w > 0, log_w, torch.zeros_like(log_w))).sum())


def update_direction(log_w: torch.Tensor, grads: Sequence[torch.Tensor], sigmas: Sequence[float],
                     candidates: Sequence[Candidate], min_weight: float = 1e-12) -> list[torch.Tensor]:
    """Σ_k w_k Δ_k, each Δ_k regenerated from its seed; weights below `min_weight` are skipped."""
    out = [torch.zeros_like(g) for g in grads]
    for lw, cand in zip(log_w.tolist(), candidates):
        w = math.exp(lw)
        if w < min_weight:
            continue
        for acc, d in zip(out, perturbation(grads, sigmas, cand)):
            acc.add_(d, alpha=w)
    return out


def as_tensors(values: Sequence) -> list[torch.Tensor]:
    """Tensors over NumPy arrays without copying (read-only views of a shared object included:
    nothing here writes to them)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return [v if isinstance(v, torch.Tensor) else torch.as_tensor(v) for v in values]


@torch.no_grad()
def load_parameters(params: Sequence[torch.nn.Parameter], values: Sequence, delta: Sequence[torch.Tensor] | None = None
                    ) -> None:
    """params ← values (+ Δ): values are tensors or NumPy arrays (e.g. read-only views of a shared
    object), copied into the existing parameter storage."""
    for i, (p, v) in enumerate(zip(params, as_tensors(values))):
        p.copy_(v)
        if delta is not None:
            p.add_(delta[i])
