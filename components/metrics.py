"""Text-generation and ranking metrics, on token lists (pure Python, no dependencies).

- `corpus_bleu`: corpus-level BLEU (Papineni et al., 2002) as NLTK computes it, with NLTK's
  smoothing method 1 (Chen & Cherry, 2014): an n-gram order with no match gets ε = 0.1 matches
  out of its n-gram count. CDial-GPT reports BLEU-2 = weights (0.5, 0.5) and BLEU-4 = (0.25,) × 4.
- `distinct_n`: distinct-n (Li et al., 2016), distinct n-grams over all n-grams of all outputs.
- `recall_at_k`: R_n@k of ranking one positive among n candidates, ties broken uniformly at random
  (as an expectation), so equal scores never favour the positive; `mean_reciprocal_rank` likewise.

    corpus_bleu([[list("你好啊")]], [list("你好")], weights=(0.5, 0.5))
    distinct_n([list("好的好的")], 2)   # 2 distinct of 3 bigrams
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

BLEU2 = (0.5, 0.5)
BLEU4 = (0.25, 0.25, 0.25, 0.25)


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def corpus_bleu(references: Sequence[Sequence[Sequence[str]]], hypotheses: Sequence[Sequence[str]],
                weights: Sequence[float] = BLEU4, epsilon: float = 0.1) -> float:
    """references[i]: the reference token lists of hypothesis i (one or more).

    For each order n the clipped n-gram matches and the n-gram counts are summed over the corpus
    (a hypothesis shorter than n counts 1 in the denominator, as in NLTK); a zero match count
    becomes ε (smoothing method 1). The brevity penalty uses, per hypothesis, the reference length
    closest to it (the shorter one on a tie). No unigram match at all gives 0.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not weights:
        raise ValueError("BLEU needs at least one n-gram weight")
    orders = len(weights)
    matches = [0] * orders
    totals = [0] * orders
    hyp_len = ref_len = 0
    for refs, hyp in zip(references, hypotheses):
        if not refs:
            raise ValueError("every hypothesis needs at least one reference")
        for n in range(1, orders + 1):
            counts = Counter(ngrams(hyp, n))
            best: Counter = Counter()
            for ref in refs:
                best |= Counter(ngrams(ref, n))                     # max count of each n-gram over references
            matches[n - 1] += sum(min(c, best[g]) for g, c in counts.items())
            totals[n - 1] += max(1, sum(counts.values()))
        hyp_len += len(hyp)
        ref_len += min((len(r) for r in refs), key=lambda r: (abs(r - len(hyp)), r))
    if matches[0] == 0:
        return 0.0
    precisions = [(m if m else epsilon) / t for m, t in zip(matches, totals)]
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(math.fsum(w * math.log(p) for w, p in zip(weights, precisions)))


def distinct_n(outputs: Sequence[Sequence[str]], n: int) -> float:
    """Distinct n-grams / all n-grams over every output (0 when there is no n-gram)."""
    grams = [g for out in outputs for g in ngrams(out, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def recall_at_k(scores: Sequence[Sequence[float]], positives: Sequence[int], k: int) -> float:
    """Mean over queries of P(positive ranked within the top k): with g candidates scored strictly
    higher than the positive and e others scored equal, the positive's rank is uniform on
    g+1 .. g+e+1, so the probability is clamp((k - g) / (e + 1), 0, 1)."""
    if len(scores) != len(positives):
        raise ValueError(f"{len(scores)} score lists but {len(positives)} positives")
    if not scores:
        return 0.0
    total = 0.0
    for row, pos in zip(scores, positives):
        p = row[pos]
        higher = sum(1 for i, s in enumerate(row) if i != pos and s > p)
        equal = sum(1 for i, s in enumerate(row) if i != pos and s == p)
        total += min(1.0, max(0.0, (k - higher) / (equal + 1)))
    return total / len(scores)


def mean_reciprocal_rank(scores: Sequence[Sequence[float]], positives: Sequence[int]) -> float:
    """Mean over queries of E[1 / rank of the positive], ties broken uniformly at random as in
    `recall_at_k`: with g candidates above it and e level with it, the rank is uniform on g+1..g+e+1."""
    if len(scores) != len(positives):
        raise ValueError(f"{len(scores)} score lists but {len(positives)} positives")
    if not scores:
        return 0.0
    total = 0.0
    for row, pos in zip(scores, positives):
        p = row[pos]
        higher = sum(1 for i, s in enumerate(row) if i != pos and s > p)
        equal = sum(1 for i, s in enumerate(row) if i != pos and s == p)
        total += sum(1.0 / r for r in range(higher + 1, higher + equal + 2)) / (equal + 1)
    return total / len(scores)
