"""Unsupervised binary constituency trees from impact matrices, top-down.

A tree over words 0..n-1 is a leaf index (int) or a pair (left, right) of trees covering adjacent
spans. Decoders:

- `mart`: MART as Wu et al. (ACL 2020) run it in their public code (LividWo/Perturbed-Masking,
  constituency parsing). First the impact matrix F (n x n over the words) becomes scores S:

      S = 1 - softmax_rows(F)  with the diagonal 0 before and after the `1 -`

  (each column j normalised over its rows i; so high impact means a small score). A span of m
  words (S restricted to it, indices 0..m-1) is cut at the word k in 1..m-1 that *minimises*

      score(k) = sum S[L, L] / 2k  +  sum S[R, R] / 2(m - k)  -  (sum S[L, R] + sum S[R, L]) / k(m - k)

  with L = 0..k-1 and R = k+1..m-1: word k itself is in neither block (ties: the first k). The
  span becomes (tree(L), (w_k, tree(R))), or (tree(L), w_k) when R is empty: w_k always heads the
  right constituent. This is the decoder that reproduces the paper's constituency numbers.
- `mart_block_means`: bert4ray's earlier reading of the paper's §5 (what `mart` meant before): on
  the raw F, a span [i, j) is split at the k that *maximises* the contrast of block means

      obj(k) = mean F[L, L] + mean F[R, R] - mean F[L, R] - mean F[R, L],   L = [i, k), R = [k, j)

  over every k in i+1 .. j-1, word k inside the right block, and both parts split again into
  (tree(L), tree(R)) (ties: the leftmost k). Block sums come from a 2-D prefix sum.
- `seed` (bojone/perturbed_masking's syntax_parsing.py): the block-mean contrast of
  `mart_block_means`, but k only ranges over i+1 .. j-2 and the right part is built as (word k,
  tree of the rest), i.e. word k always attaches to the right part's remainder; spans of two words
  are (w0, w1).
- `right_branching` / `left_branching` baselines.

The two MART readings differ in the scores (softmax-normalised and inverted vs raw), the block
weights (2k, 2(m - k), k(m - k) vs the block sizes), word k (left out of every block vs inside the
right one), the direction (min vs max) and the tree ((L, (w_k, R)) vs (L, R)).

`tree_spans` gives the constituents as [start, end) spans (length >= 2) for bracket F1.

Stored settings: a model's bert4ray.json "perturbed_masking" settings carry "format": 2 since `mart`
names the authors' MART. Older settings that say "mart" meant the block-mean variant and are read
as `mart_block_means` (`migrate_settings`), so a served model keeps its trees; recipes and requests
that say `mart` get the authors' decoder.
"""

from __future__ import annotations

import numpy as np

Tree = int | tuple
ALGORITHMS = ("mart", "mart_block_means", "seed", "right_branching", "left_branching")
SETTINGS_FORMAT = 2
"""Format of stored probe settings from which on "mart" means the authors' MART."""


def migrate_settings(settings: dict) -> tuple[dict, str | None]:
    """Stored probe settings in the current format, and a message when their meaning was kept by
    renaming: before format 2, "mart" was the block-mean variant."""
    if settings.get("format", 1) >= SETTINGS_FORMAT:
        return settings, None
    out = {**settings, "format": SETTINGS_FORMAT}
    if settings.get("constituency") != "mart":
        return out, None
    out["constituency"] = "mart_block_means"
    return out, ("stored constituency decoder 'mart' predates format 2 and means the block-mean variant: "
                 "reading it as 'mart_block_means' (the trees it gave so far); save 'mart' again, e.g. "
                 "with `bert4ray probe ... --set output.save_to_model=true`, for the authors' MART")


def _check_matrix(F) -> np.ndarray:
    F = np.asarray(F, dtype=np.float64)
    if F.ndim != 2 or F.shape[0] != F.shape[1]:
        raise ValueError(f"constituency parsing takes one (n, n) impact matrix, got shape {F.shape}")
    if np.isnan(F).any():
        raise ValueError("the impact matrix has NaN entries: parsing needs pairs='all'")
    return F


class _Blocks:
    """O(1) sums of rectangular blocks of F from a 2-D prefix sum."""

    def __init__(self, F):
        F = _check_matrix(F)
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


def mart_block_means(F) -> Tree:
    """bert4ray's earlier MART: the block-mean contrast on the raw F, maximised, split (L, R)."""
    b = _Blocks(F)
    n = b.P.shape[0] - 1

    def build(i, j):
        if j - i == 1:
            return i
        k = best_split(F, i, j, blocks=b)
        return (build(i, k), build(k, j))

    return build(0, n)


# --- MART as the authors run it ------------------------------------------------------------------
def mart_scores(F) -> np.ndarray:
    """The authors' scores from an impact matrix: softmax over each column, diagonal 0, 1 - x,
    diagonal 0 again. High impact -> small score; the cut then minimises."""
    F = _check_matrix(F)
    e = np.exp(F - F.max()) if F.size else F                # the global shift leaves each column's softmax as is
    S = e / e.sum(axis=0, keepdims=True)
    np.fill_diagonal(S, 0.0)
    S = 1.0 - S
    np.fill_diagonal(S, 0.0)
    return S


def cut_score(S, k: int) -> float:
    """The authors' objective for cutting the span S (m x m) before word k (1 <= k < m): word k
    heads the right part and belongs to no block."""
    m = S.shape[0]
    left = S[:k, :k].sum() / (2 * k)
    right = S[k + 1:, k + 1:].sum() / (2 * (m - k))
    between = (S[:k, k + 1:].sum() + S[k + 1:, :k].sum()) / (k * (m - k))
    return float(left + right - between)


def best_cut(S) -> int:
    """The k in 1..m-1 with the smallest cut_score (the first on ties)."""
    best_k, best = 1, np.inf
    for k in range(1, S.shape[0]):
        v = cut_score(S, k)
        if v < best:
            best_k, best = k, v
    return best_k


def mart_tree(S) -> Tree:
    """Top-down cuts of prepared scores S into (tree(L), (w_k, tree(R))); each span is cut on its
    own sub-matrix of S (the scores are prepared once, for the whole sentence)."""
    S = np.asarray(S, dtype=np.float64)
    if S.shape[0] == 0:
        raise ValueError("constituency parsing needs at least one word")

    def build(i, j):                                        # words i..j-1 = S[i:j, i:j]
        if j - i == 1:
            return i
        k = i + best_cut(S[i:j, i:j])
        right = k if k + 1 == j else (k, build(k + 1, j))
        return (build(i, k), right)

    return build(0, S.shape[0])


def mart(F) -> Tree:
    """The authors' MART on an impact matrix: `mart_scores`, then `mart_tree`."""
    return mart_tree(mart_scores(F))


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
    if algorithm == "mart_block_means":
        return mart_block_means(F)
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
