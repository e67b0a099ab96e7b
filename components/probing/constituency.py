"""Unsupervised binary constituency trees from impact matrices, top-down.

A tree over words 0..n-1 is a leaf index (int) or a pair (left, right) of trees covering adjacent
spans. Decoders:

- `mart` (MART, the paper's objective, as we read Wu et al. 2020 §5): a span [i, j) is split at the
  k that maximizes the contrast between the average impact inside the two parts and across them,

      obj(k) = mean F[L, L] + mean F[R, R] - mean F[L, R] - mean F[R, L],   L = [i, k), R = [k, j)

  over every k in i+1 .. j-1, and both parts are split again (ties: the leftmost k). Block sums come
  from a 2-D prefix sum, so each candidate split costs O(1).
- `seed` (bojone/perturbed_masking's syntax_parsing.py): the same block contrast, but k only ranges
  over i+1 .. j-2 and the right part is built as (word k, tree of the rest), i.e. word k always
  attaches to the right part's remainder; spans of two words are (w0, w1).
- `right_branching` / `left_branching` baselines.

`tree_spans` gives the constituents as [start, end) spans (length >= 2) for bracket F1.
"""

from __future__ import annotations

import numpy as np

Tree = int | tuple
ALGORITHMS = ("mart", "seed", "right_branching", "left_branching")


class _Blocks:
    """O(1) sums of rectangular blocks of F from a 2-D prefix sum."""

    def __init__(self, F):
        F = np.asarray(F, dtype=np.float64)
        if F.ndim != 2 or F.shape[0] != F.shape[1]:
            raise ValueError(f"constituency parsing takes one (n, n) impact matrix, got shape {F.shape}")
        if np.isnan(F).any():
            raise ValueError("the impact matrix has NaN entries: parsing needs pairs='all'")
        n = F.shape[0]
        self.P = np.zeros((n + 1, n + 1))
        self.P[1:, 1:] = F.cumsum(0).cumsum(1)

    def mean(self, r0, r1, c0, c1) -> float:
        P = self.P
        return (P[r1, c1] - P[r0, c1] - P[r1, c0] + P[r0, c0]) / ((r1 - r0) * (c1 - c0))


def split_objective(F, i: int, j: int, k: int, blocks: _Blocks | None = None) -> float:
    """The block contrast of splitting [i, j) into [i, k) and [k, j)."""
    b = blocks or _Blocks(F)
    return (b.mean(i, k, i, k) + b.mean(k, j, k, j) - b.mean(i, k, k, j) - b.mean(k, j, i, k))


def best_split(F, i: int, j: int, ks=None, blocks: _Blocks | None = None) -> int:
    b = blocks or _Blocks(F)
    ks = range(i + 1, j) if ks is None else ks
    best_k, best = None, -np.inf
    for k in ks:
        v = split_objective(F, i, j, k, b)
        if v > best:
            best_k, best = k, v
    return best_k if best_k is not None else i + 1


def mart(F) -> Tree:
    b = _Blocks(F)
    n = b.P.shape[0] - 1

    def build(i, j):
        if j - i == 1:
            return i
        k = best_split(F, i, j, blocks=b)
        return (build(i, k), build(k, j))

    return build(0, n)


def seed_tree(F) -> Tree:
    b = _Blocks(F)
    n = b.P.shape[0] - 1

    def build(i, j):
        if j - i == 1:
            return i
        if j - i == 2:
            return (i, i + 1)
        k = best_split(F, i, j, ks=range(i + 1, j - 1), blocks=b)
        rest = build(k + 1, j)
        return (build(i, k), (k, rest))

    return build(0, n)


def right_branching(n: int) -> Tree:
    tree: Tree = n - 1
    for i in range(n - 2, -1, -1):
        tree = (i, tree)
    return tree


def left_branching(n: int) -> Tree:
    tree: Tree = 0
    for i in range(1, n):
        tree = (tree, i)
    return tree


def parse_constituency(F, algorithm: str = "mart") -> Tree:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown constituency algorithm {algorithm!r}; valid: {', '.join(ALGORITHMS)}")
    n = np.asarray(F).shape[-1]
    if algorithm == "mart":
        return mart(F)
    if algorithm == "seed":
        return seed_tree(F)
    return right_branching(n) if algorithm == "right_branching" else left_branching(n)


def tree_spans(tree: Tree) -> set[tuple[int, int]]:
    """Every constituent [start, end) of two or more words (the whole sentence included)."""
    spans: set[tuple[int, int]] = set()

    def walk(t) -> tuple[int, int]:
        if isinstance(t, int):
            return t, t + 1
        parts = [walk(c) for c in t]
        for (_, e), (s, _) in zip(parts, parts[1:]):
            if e != s:
                raise ValueError(f"tree children are not adjacent: {parts}")
        span = (parts[0][0], parts[-1][1])
        if span[1] - span[0] >= 2:
            spans.add(span)
        return span

    walk(tree)
    return spans


def tree_leaves(tree: Tree) -> list[int]:
    return [tree] if isinstance(tree, int) else [i for c in tree for i in tree_leaves(c)]


def nested(tree: Tree, words: list[str]):
    """The tree with words at the leaves, as nested lists (JSON)."""
    return words[tree] if isinstance(tree, int) else [nested(c, words) for c in tree]


_ESCAPES = {"(": "-LRB-", ")": "-RRB-"}


def to_brackets(tree: Tree, words: list[str]) -> str:
    """Unlabeled bracketed string, e.g. ((the dog) barked); brackets in words become -LRB-/-RRB-
    and spaces become underscores, so the string reads back unambiguously."""
    def leaf(w):
        return "".join(_ESCAPES.get(ch, "_" if ch.isspace() else ch) for ch in w)

    if isinstance(tree, int):
        return leaf(words[tree])
    return "(" + " ".join(to_brackets(c, words) for c in tree) + ")"
