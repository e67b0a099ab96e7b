"""Unsupervised Chinese word segmentation from impact matrices over characters.

The score between adjacent characters k and k+1 is the seed's two-sided average

    s_k = (F[k][k+1] + F[k+1][k]) / 2

(how much each of the two changes when the other is masked too): characters that belong to one
word depend on each other strongly, so k and k+1 are joined when s_k >= threshold and a word
boundary falls between them otherwise.

The threshold depends on the model, the layer and the distance (the seed hard-codes 8 for
bert-base-chinese's last layer and Euclidean distance; its open question is how to choose it
without supervision). Here it is fixed, or chosen from the corpus' own distribution of scores,
which is a mixture of "inside a word" (high) and "between words" (low) scores:

- `otsu`: the split of the sorted scores that maximizes the between-class variance
  w0 w1 (mu0 - mu1)^2 (Otsu, 1979), computed exactly over every split point (no histogram);
- `gmm`: a two-component 1-D Gaussian mixture fitted by EM; the threshold is where the two
  weighted densities cross between the component means.

Both can work on log scores (`log=True`): impact distances are positive and right-skewed, and
the two classes are closer to Gaussian on a log scale. `best_fixed_threshold` is the oracle
(the gold-optimal threshold), for comparison only.
"""

from __future__ import annotations

import math

import numpy as np

THRESHOLD_METHODS = ("otsu", "gmm")
# Clause punctuation after which a long text is cut into pieces the model can take: each of these
# is a word of its own in the PKU standard, so a cut never falls inside a gold word.
CLAUSE_PUNCTUATION = set("，。！？；：、,!?;:")


def boundary_scores(F: np.ndarray) -> np.ndarray:
    """(n, n) impact matrix -> (n - 1,) scores between adjacent units."""
    F = np.asarray(F, dtype=np.float64)
    if F.ndim != 2 or F.shape[0] != F.shape[1]:
        raise ValueError(f"boundary_scores takes one (n, n) impact matrix, got shape {F.shape}")
    n = F.shape[0]
    k = np.arange(n - 1)
    return (F[k, k + 1] + F[k + 1, k]) / 2.0


def segment(units: list[str], scores, threshold: float) -> list[str]:
    """Join unit k+1 to the current word when scores[k] >= threshold. A score of -inf (a forced
    boundary, e.g. between two pieces of a long text) always splits."""
    if len(scores) != max(0, len(units) - 1):
        raise ValueError(f"{len(units)} units need {max(0, len(units) - 1)} scores, got {len(scores)}")
    if not units:
        return []
    words = [units[0]]
    for unit, s in zip(units[1:], scores):
        if s >= threshold:
            words[-1] += unit
        else:
            words.append(unit)
    return words


def boundaries(scores, threshold: float) -> np.ndarray:
    """Boolean (n - 1,): True where a word boundary falls."""
    return ~(np.asarray(scores, dtype=np.float64) >= threshold)


def _finite(scores) -> np.ndarray:
    x = np.asarray(scores, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def otsu_threshold(scores) -> float:
    """The threshold (midway between the two values it separates) that maximizes the between-class
    variance of the two classes below / at-or-above it."""
    x = np.sort(_finite(scores))
    if x.size < 2 or x[0] == x[-1]:
        raise ValueError("Otsu's threshold needs at least two distinct finite scores")
    n = x.size
    csum = np.cumsum(x)
    k = np.arange(1, n)                                   # class 0 = x[:k], class 1 = x[k:]
    k = k[x[k - 1] < x[k]]                                # only between distinct values
    w0, w1 = k / n, (n - k) / n
    mu0 = csum[k - 1] / k
    mu1 = (csum[-1] - csum[k - 1]) / (n - k)
    between = w0 * w1 * (mu0 - mu1) ** 2
    best = k[int(np.argmax(between))]
    return float((x[best - 1] + x[best]) / 2.0)


def fit_gmm(scores, iters: int = 500, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-component 1-D Gaussian mixture by EM: (weights, means, standard deviations), means
    ascending. Initialised from the two halves of Otsu's split, so the result is deterministic."""
    x = _finite(scores)
    t = otsu_threshold(x)
    lo, hi = x[x < t], x[x >= t]
    floor = 1e-6 * (x.std() + 1e-12)
    w = np.array([lo.size, hi.size], dtype=np.float64) / x.size
    mu = np.array([lo.mean(), hi.mean()])
    sd = np.array([max(lo.std(), floor), max(hi.std(), floor)])
    prev = -np.inf
    for _ in range(iters):
        # E step: responsibilities, in log space for stability.
        logp = (np.log(w)[None] - np.log(sd)[None] - 0.5 * np.log(2 * np.pi)
                - 0.5 * ((x[:, None] - mu[None]) / sd[None]) ** 2)          # (N, 2)
        top = logp.max(axis=1, keepdims=True)
        ll = float((top[:, 0] + np.log(np.exp(logp - top).sum(axis=1))).sum())
        r = np.exp(logp - top)
        r /= r.sum(axis=1, keepdims=True)
        # M step.
        nk = r.sum(axis=0) + 1e-12
        w = nk / x.size
        mu = (r * x[:, None]).sum(axis=0) / nk
        sd = np.sqrt((r * (x[:, None] - mu[None]) ** 2).sum(axis=0) / nk)
        sd = np.maximum(sd, floor)
        if abs(ll - prev) <= tol * max(1.0, abs(ll)):
            break
        prev = ll
    order = np.argsort(mu)
    return w[order], mu[order], sd[order]


def gmm_threshold(scores) -> float:
    """Where w0 N(x; mu0, sd0) = w1 N(x; mu1, sd1) between the two means (the midpoint of the
    means if the densities do not cross there)."""
    w, mu, sd = fit_gmm(scores)
    # log w0 - log sd0 - (x-mu0)^2 / 2sd0^2 = log w1 - log sd1 - (x-mu1)^2 / 2sd1^2  ->  a x^2 + b x + c = 0
    a = 1 / (2 * sd[1] ** 2) - 1 / (2 * sd[0] ** 2)
    b = mu[0] / sd[0] ** 2 - mu[1] / sd[1] ** 2
    c = (mu[1] ** 2 / (2 * sd[1] ** 2) - mu[0] ** 2 / (2 * sd[0] ** 2)
         + math.log(w[0] / sd[0]) - math.log(w[1] / sd[1]))
    if abs(a) < 1e-12:
        roots = [-c / b] if b != 0 else []
    else:
        disc = b * b - 4 * a * c
        roots = [] if disc < 0 else [(-b + s * math.sqrt(disc)) / (2 * a) for s in (1, -1)]
    inside = [r for r in roots if mu[0] <= r <= mu[1]]
    return float(inside[0]) if inside else float((mu[0] + mu[1]) / 2)


def choose_threshold(scores, method: str, log: bool = False) -> float:
    """An unsupervised threshold from a corpus' pooled boundary scores (-inf entries, the forced
    boundaries, are left out). With log=True the method runs on log scores and the threshold is
    mapped back."""
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"unknown threshold method {method!r}; valid: {', '.join(THRESHOLD_METHODS)} "
                         "(or a number for a fixed threshold)")
    x = _finite(scores)
    if log:
        if (x <= 0).any():
            raise ValueError("log=True needs positive scores (use the Euclidean distance, or log=False)")
        x = np.log(x)
    t = otsu_threshold(x) if method == "otsu" else gmm_threshold(x)
    return float(np.exp(t)) if log else t


def best_fixed_threshold(scores_list: list, gold_list: list[list[str]], units_list: list[list[str]],
                         candidates: int = 200) -> tuple[float, float]:
    """Oracle: the threshold (among quantiles of the pooled scores) with the highest word F1 against
    gold segmentations. Returns (threshold, F1). For comparison with the unsupervised choice only."""
    from components.probing.evaluate import segmentation_prf

    pooled = _finite(np.concatenate([np.asarray(s, dtype=np.float64) for s in scores_list]))
    qs = np.unique(np.quantile(pooled, np.linspace(0.0, 1.0, candidates)))
    # Midpoints between consecutive candidate values, plus both ends: every distinct decision.
    grid = np.concatenate([[qs[0]], (qs[1:] + qs[:-1]) / 2, [np.nextafter(qs[-1], np.inf)]])
    best = (float(grid[0]), -1.0)
    for t in grid:
        pred = [segment(u, s, t) for u, s in zip(units_list, scores_list)]
        f1 = segmentation_prf(pred, gold_list).f1
        if f1 > best[1]:
            best = (float(t), f1)
    return best


def split_pieces(text: str, max_chars: int) -> list[str]:
    """Cut a text after clause punctuation, and (rarely) at max_chars, into pieces the model can
    take. The pieces concatenate back to the text."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    pieces, current = [], ""
    for ch in text:
        current += ch
        if ch in CLAUSE_PUNCTUATION or len(current) >= max_chars:
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces


def random_boundaries(n_gaps: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Baseline: each gap is a boundary with probability `rate`."""
    return rng.random(n_gaps) < rate


def words_from_boundaries(units: list[str], is_boundary) -> list[str]:
    if not units:
        return []
    words = [units[0]]
    for unit, b in zip(units[1:], is_boundary):
        if b:
            words.append(unit)
        else:
            words[-1] += unit
    return words
