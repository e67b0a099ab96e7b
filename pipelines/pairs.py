"""Labelled sentence-pair files (LCQMC / BQ / AFQMC style: `text_a \\t text_b \\t label`).

Uses:
- training groups for `simbert`: the positive pairs joined into groups of synonymous sentences
  (connected components: a~b and b~c put a, b, c in one group);
- threshold accuracy of a retrieval model: pick the cosine threshold that classifies the dev pairs
  best, then report the accuracy of that threshold on the test pairs;
- graded pairs (STS-B: `s1 \\t s2 \\t score`): the test sets of `bert4ray sts` and the training rows
  of the `cosent` task.

    bert4ray data pairs --input lcqmc/train.tsv --out groups.jsonl
    bert4ray data pairs --input STS-B.train.data --scores --out stsb-scored.jsonl
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from components.io import write_jsonl


def _pair_lines(path: str | Path, what: str):
    """(line number, a, b, third field) of each non-blank line of a tab-separated pair file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pair file '{path}' does not exist")
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 3:
                raise ValueError(f"{path}:{line_no}: expected 'text_a<TAB>text_b<TAB>{what}', "
                                 f"got {len(parts)} field(s)")
            a, b, third = (p.strip() for p in parts)
            yield line_no, a, b, third


def read_pairs(path: str | Path, min_score: float | None = None) -> list[tuple[str, str, int]]:
    """(text_a, text_b, label) rows; a malformed line is an error naming file and line.
    A first line whose label is not 0/1 is taken as a header and skipped. With `min_score`, the third
    field is a graded score (e.g. STS-B's 0-5) and a pair is positive (1) when it is >= min_score."""
    if min_score is not None:
        return [(a, b, int(score >= min_score)) for a, b, score in read_scored_pairs(path)]
    rows = []
    for line_no, a, b, label in _pair_lines(path, "label"):
        if label not in ("0", "1"):
            if line_no == 1:
                continue                           # header
            raise ValueError(f"{path}:{line_no}: label must be 0 or 1, got '{label[:20]}'")
        if not a or not b:
            raise ValueError(f"{path}:{line_no}: empty sentence")
        rows.append((a, b, int(label)))
    if not rows:
        raise ValueError(f"{path}: no pairs")
    return rows


def read_scored_pairs(path: str | Path) -> list[tuple[str, str, float]]:
    """(text_a, text_b, score) rows of a graded pair file (STS-B: `s1 \\t s2 \\t 0-5`); a malformed
    line is an error naming file and line. A first line whose score is not a number is a header."""
    rows = []
    for line_no, a, b, score in _pair_lines(path, "score"):
        try:
            value = float(score)
        except ValueError:
            if line_no == 1:
                continue                           # header
            raise ValueError(f"{path}:{line_no}: score must be a number, got '{score[:20]}'") from None
        if not math.isfinite(value):
            raise ValueError(f"{path}:{line_no}: score must be finite, got '{score[:20]}'")
        if not a or not b:
            raise ValueError(f"{path}:{line_no}: empty sentence")
        rows.append((a, b, value))
    if not rows:
        raise ValueError(f"{path}: no pairs")
    return rows


def pairs_to_groups(pairs: list[tuple[str, str, int]]) -> list[list[str]]:
    """Groups of synonymous sentences: connected components of the positive pairs, each in order of
    first appearance; negative pairs are ignored."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]                 # path halving
            x = parent[x]
        return x

    order: list[str] = []
    for a, b, label in pairs:
        if label != 1 or a == b:
            continue
        for s in (a, b):
            if s not in parent:
                order.append(s)
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra
    groups: dict[str, list[str]] = {}
    for s in order:
        groups.setdefault(find(s), []).append(s)
    return list(groups.values())


def write_groups(pair_file: str | Path, out: str | Path, min_score: float | None = None) -> tuple[Path, int]:
    """Convert a pair file into `{"texts": [...]}` JSON Lines (atomically); returns (path, groups).
    `min_score`: graded pairs (STS-B), positive from that score on (see read_pairs)."""
    groups = pairs_to_groups(read_pairs(pair_file, min_score))
    return write_jsonl(out, [{"texts": g} for g in groups]), len(groups)


def write_scored_pairs(pair_file: str | Path, out: str | Path) -> tuple[Path, int]:
    """Convert a graded pair file into `{"text_a", "text_b", "score"}` JSON Lines for the `cosent`
    task (atomically); returns (path, pairs)."""
    rows = read_scored_pairs(pair_file)
    return write_jsonl(out, [{"text_a": a, "text_b": b, "score": score} for a, b, score in rows]), len(rows)


def pairs_from_groups(groups: list[list[str]], seed: int = 0) -> list[tuple[str, str, int]]:
    """Labelled pairs from groups: every within-group pair (label 1) and as many pairs of sentences
    from two different groups (label 0), drawn with a fixed seed."""
    import random
    rng = random.Random(seed)
    positives = [(a, b, 1) for g in groups for i, a in enumerate(g) for b in g[i + 1:]]
    negatives = []
    while len(groups) > 1 and len(negatives) < len(positives):
        g, h = rng.sample(range(len(groups)), 2)
        negatives.append((rng.choice(groups[g]), rng.choice(groups[h]), 0))
    return positives + negatives


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold t maximising the accuracy of `score >= t` on (scores, labels), and that
    accuracy. Candidates are midpoints between consecutive sorted scores (and both ends)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    if len(scores) == 0:
        raise ValueError("no pairs to choose a threshold on")
    order = np.argsort(scores)
    s, y = scores[order], labels[order]
    # Predicting positive from index i on: correct = negatives before i + positives from i on.
    neg_before = np.concatenate([[0], np.cumsum(~y)])
    pos_from = np.concatenate([np.cumsum(y[::-1])[::-1], [0]])
    correct = neg_before + pos_from                                   # (n + 1,)
    cuts = np.concatenate([[s[0] - 1.0], (s[:-1] + s[1:]) / 2, [s[-1] + 1.0]])
    best = int(np.argmax(correct))
    return float(cuts[best]), float(correct[best] / len(s))


def threshold_accuracy(dev_scores, dev_labels, test_scores, test_labels) -> dict[str, float]:
    """Accuracy on the test pairs of the threshold chosen on the dev pairs."""
    threshold, dev_acc = best_threshold(dev_scores, dev_labels)
    test = np.asarray(test_scores) >= threshold
    acc = float((test == np.asarray(test_labels).astype(bool)).mean())
    return {"threshold": threshold, "dev_accuracy": dev_acc, "test_accuracy": acc}
