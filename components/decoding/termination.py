"""Self-terminating output layers, so that decoding always stops.

With z the logits at generation step t (t = 1 for the first generated token), σ the sigmoid and
ε in (0, 1):

- ST (Welleck et al., 2020):   1 − p(eos)_t = Π_{t'≤t} (1 − ε) σ(z_eos,t')
  p(eos) rises monotonically and is at least 1 − (1 − ε)^t.
- NMST (Choi et al., 2023):    p(eos)_t = (1 − σ(z_eos,t)) (1 − (1 − ε)^t) + σ(z_eos,t)
  i.e. 1 − p(eos)_t = (1 − σ(z_eos,t)) (1 − ε)^t: the same lower bound, no monotonicity.

Every other token v gets (1 − p(eos)_t) · softmax over the vocabulary without EOS. All of it is
computed in log space: log(1 − p(eos)) is a sum of log-sigmoids, log p(eos) = log(1 − exp(·)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

KINDS = ("st", "nmst")


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x <= 0, accurate near 0 and for very negative x."""
    x = x.clamp(max=-1e-12)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def termination_log_probs(logits: torch.Tensor, eos_id: int, epsilon: float, kind: str, step: torch.Tensor,
                          log_survival: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (N, V); step (N,) generation step t >= 1; log_survival (N,) = log Π of the earlier
    ST factors (zeros at the start; unused by NMST). Returns (log-probs (N, V), new log_survival)."""
    if kind not in KINDS:
        raise ValueError(f"unknown termination head {kind!r}; valid: {', '.join(KINDS)}")
    z = logits.float()
    z_eos = z[:, eos_id]
    log_one_minus_eps = math.log1p(-epsilon)
    if kind == "st":
        prev = log_survival if log_survival is not None else torch.zeros_like(z_eos)
        log_keep = prev + log_one_minus_eps + F.logsigmoid(z_eos)           # log(1 − p_eos)
        new_state = log_keep
    else:
        log_keep = F.logsigmoid(-z_eos) + step.float() * log_one_minus_eps
        new_state = log_keep
    others = z.clone()
    others[:, eos_id] = float("-inf")
    out = log_keep[:, None] + torch.log_softmax(others, dim=-1)
    out[:, eos_id] = _log1mexp(log_keep)
    return out, new_state


def termination_nll(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, eos_id: int, epsilon: float,
                    kind: str) -> torch.Tensor:
    """Training loss of a self-terminating head: mean negative log-likelihood of `targets` over the
    positions where `mask` is 1. logits (B, T, V) predict targets (B, T); the generation step t of a
    position is its rank among the masked positions of its row (1, 2, ...), as in decoding."""
    if kind not in KINDS:
        raise ValueError(f"unknown termination head {kind!r}; valid: {', '.join(KINDS)}")
    mask = mask.bool()
    z = logits.float()
    z_eos = z[..., eos_id]                                                    # (B, T)
    log_one_minus_eps = math.log1p(-epsilon)
    if kind == "st":                                                          # running product over steps
        log_keep = torch.cumsum((log_one_minus_eps + F.logsigmoid(z_eos)) * mask, dim=1)
    else:
        log_keep = F.logsigmoid(-z_eos) + torch.cumsum(mask.long(), dim=1) * log_one_minus_eps
    others = z.masked_fill(F.one_hot(torch.tensor(eos_id, device=z.device), z.shape[-1]).bool(), float("-inf"))
    log_other = log_keep + torch.log_softmax(others, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    log_p = torch.where(targets == eos_id, _log1mexp(log_keep), log_other)
    return -torch.where(mask, log_p, 0.0).sum() / mask.sum().clamp_min(1)
