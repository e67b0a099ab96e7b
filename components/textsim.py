"""Lexical similarity baselines and rank correlation (numpy only), for the public benchmarks:
sentence similarity (STS-B) and response selection (R10@k).

- `char_ngrams(text, (1, 2))`: the character n-grams of a text, whitespace removed;
- `TfIdf`: smoothed IDF fitted on a reference collection (log((1 + N) / (1 + df)) + 1, as
  scikit-learn's default), sublinear-free term counts, L2-normalised sparse vectors and their cosine;
- `jaccard`: |A ∩ B| / |A ∪ B| of two token sets;
- `spearman`: Spearman's rho with average ranks for ties (the Pearson correlation of the ranks).

    idf = TfIdf.fit([char_ngrams(s) for s in train_sentences])
    idf.cosine(char_ngrams("一个人在切黄瓜"), char_ngrams("一个人正在切黄瓜"))
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np


def char_ngrams(text: str, orders: Sequence[int] = (1, 2)) -> list[str]:
    chars = "".join(text.split())
    return [chars[i:i + n] for n in orders for i in range(len(chars) - n + 1)]


class TfIdf:
    def __init__(self, df: Counter, n_docs: int):
        self.df, self.n_docs = df, n_docs

    @classmethod
    def fit(cls, docs: Iterable[Sequence[str]]) -> TfIdf:
        df: Counter = Counter()
        n = 0
        for doc in docs:
            df.update(set(doc))
            n += 1
        return cls(df, n)

    def idf(self, term: str) -> float:
        # A term never seen in the reference collection gets the largest weight, as if df = 0.
        return math.log((1 + self.n_docs) / (1 + self.df.get(term, 0))) + 1.0

    def vector(self, doc: Sequence[str]) -> dict[str, float]:
        v = {t: c * self.idf(t) for t, c in Counter(doc).items()}
        norm = math.sqrt(sum(x * x for x in v.values()))
        return {t: x / norm for t, x in v.items()} if norm else {}

    def cosine(self, a: Sequence[str], b: Sequence[str]) -> float:
        va, vb = self.vector(a), self.vector(b)
        if len(vb) < len(va):
            va, vb = vb, va
        return float(sum(x * vb.get(t, 0.0) for t, x in va.items()))


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    sa, sb = set(a), set(b)
    union = sa | sb
    return len(sa & sb) / len(union) if union else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sx = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sx[end] != sx[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError("spearman needs two 1-D sequences of the same length >= 2")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom else 0.0
