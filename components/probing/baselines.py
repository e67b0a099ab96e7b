"""Baselines that every Perturbed Masking figure is shown against, computed on the same sentences.

Segmentation (boundary scores use the convention of segment.py: join k and k+1 when the score is at
or above the threshold):
- `PMI`: adjacent-character pointwise mutual information estimated from raw text,
  log P(ab) / (P(a) P(b)); characters that often stand together score high. Its threshold is chosen
  by the same unsupervised rule as Perturbed Masking's (segment.choose_threshold).
- every character a word, and random boundaries at a given rate (segment.random_boundaries).

Dependencies (heads 1-based, 0 = root):
- `right_chain` (dependency.py): each word headed by the next one;
- `left_chain`: each word headed by the one before it;
- `random_projective`: Eisner's best tree under independent uniform arc scores, a random projective
  tree with one root child (not uniform over all projective trees; the usual reading of the
  baseline, e.g. in the dependency-probing literature: random arc scores, then the decoder).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import numpy as np

from components.probing.dependency import eisner, right_chain

__all__ = ["PMI", "left_chain", "random_projective", "right_chain"]


class PMI:
    """Character unigram and adjacent-bigram counts of a raw text collection.

    Bigrams never cross whitespace or a text boundary. Unseen events are smoothed (add-one on
    characters, add-half on bigrams) so every pair has a finite score: an unseen pair of common
    characters scores low, as it should, and a pair of unseen characters scores near zero."""

    def __init__(self, unigrams: Counter, bigrams: Counter):
        self.unigrams, self.bigrams = unigrams, bigrams
        self.n1 = sum(unigrams.values())
        self.n2 = sum(bigrams.values())
        self.v = len(unigrams) + 1
        if not self.n1 or not self.n2:
            raise ValueError("PMI needs text with at least one pair of adjacent characters")

    @classmethod
    def fit(cls, texts: Iterable[str]) -> PMI:
        uni: Counter = Counter()
        bi: Counter = Counter()
        for text in texts:
            for chunk in text.split():
                uni.update(chunk)
                bi.update(zip(chunk, chunk[1:]))
        return cls(uni, bi)

    def pair(self, a: str, b: str) -> float:
        """log P(ab) - log P(a) - log P(b), each smoothed."""
        pab = (self.bigrams.get((a, b), 0) + 0.5) / (self.n2 + 0.5 * self.v * self.v)
        pa = (self.unigrams.get(a, 0) + 1) / (self.n1 + self.v)
        pb = (self.unigrams.get(b, 0) + 1) / (self.n1 + self.v)
        return math.log(pab) - math.log(pa) - math.log(pb)

    def scores(self, units: list[str]) -> np.ndarray:
        """(n - 1,) scores between adjacent units (characters; a longer unit uses its last and the
        next unit's first character)."""
        return np.array([self.pair(a[-1], b[0]) for a, b in zip(units, units[1:])], dtype=np.float64)


def left_chain(n: int) -> list[int]:
    """Baseline: every word headed by the one before it, the first by the root."""
    return [m - 1 for m in range(1, n + 1)]


def random_projective(n: int, rng: np.random.Generator) -> list[int]:
    """Baseline: a random projective tree with a single root child (Eisner over uniform scores)."""
    if n == 1:
        return [0]
    S = rng.random((n + 1, n + 1))
    return [int(h) for h in eisner(S)[1:]]
