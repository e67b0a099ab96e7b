"""Unsupervised dependency trees from impact matrices: Eisner (projective) and Chu-Liu-Edmonds
(non-projective) maximum spanning trees.

Scores are a (n+1, n+1) matrix S[h, m] = score of the arc head h -> dependent m, node 0 being the
root; S[:, 0] and the diagonal are ignored, -inf forbids an arc. Heads come back as an (n+1,)
integer array with heads[0] = -1 and heads[m] in 0..n.

From an impact matrix (`arc_scores`): the arc h -> m scores F[m][h], the impact of the head on its
dependent (LividWo's reading of the matrix, without its softmax). The root is

- `impact` (default, no gold): the word whose masking perturbs the rest of the sentence most,
  argmax_m sum_k F[k][m]; the tree is then the best one with that word as the only root child;
- a gold root (1-based word index), for comparisons with the paper, which uses the gold root.
"""

from __future__ import annotations

import numpy as np

NEG = -np.inf
ALGORITHMS = ("eisner", "chu_liu_edmonds")
ROOTS = ("impact",)


def _check_scores(S) -> np.ndarray:
    S = np.array(S, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or S.shape[0] < 2:
        raise ValueError(f"scores must be a square (n+1, n+1) matrix with n >= 1, got shape {S.shape}")
    if np.isnan(S).any():
        raise ValueError("scores contain NaN (was the impact matrix computed with pairs='all'?)")
    return S


def tree_score(S, heads) -> float:
    return float(sum(S[h, m] for m, h in enumerate(heads) if m > 0))


def is_tree(heads) -> bool:
    """Every word reaches the root 0 without a cycle."""
    n = len(heads) - 1
    for m in range(1, n + 1):
        seen, v = set(), m
        while v != 0:
            if v in seen or not 0 <= heads[v] <= n or heads[v] == v:
                return False
            seen.add(v)
            v = heads[v]
    return True


def is_projective(heads) -> bool:
    """No two arcs cross (the root at position 0, left of every word)."""
    arcs = [(min(h, m), max(h, m)) for m, h in enumerate(heads) if m > 0]
    for a, b in arcs:
        for c, d in arcs:
            if a < c < b < d:
                return False
    return True


# --- Eisner ---------------------------------------------------------------------------------------
def eisner(scores, single_root: bool = True) -> np.ndarray:
    """The highest-scoring projective tree, O(n^3). single_root: the root has exactly one child.

    Tables over spans [s, t]: complete C[s, t, d] and incomplete I[s, t, d], direction d = 1 when the
    head is the left end s, d = 0 when it is the right end t."""
    S = _check_scores(scores)
    n = S.shape[0] - 1
    if single_root:
        # Parse the words 1..n alone, then hang the best root word r under node 0:
        # best = max_r C[1, r, left] + C[r, n, right] + S[0, r].
        sub = S[1:, 1:]
        C, _, Cb, Ib = _eisner_tables(sub)
        vals = np.array([C[0, r, 0] + C[r, n - 1, 1] + S[0, r + 1] for r in range(n)])
        if not np.isfinite(vals.max()):
            raise ValueError("no tree has a finite score (every root arc is forbidden?)")
        r = int(np.argmax(vals))
        heads = np.full(n + 1, -1, dtype=np.int64)
        sub_heads = np.full(n, -1, dtype=np.int64)
        _backtrack(Cb, Ib, 0, r, 0, True, sub_heads)
        _backtrack(Cb, Ib, r, n - 1, 1, True, sub_heads)
        heads[1:] = sub_heads + 1
        heads[r + 1] = 0
        return heads
    C, _, Cb, Ib = _eisner_tables(S)
    heads = np.full(n + 1, -1, dtype=np.int64)
    _backtrack(Cb, Ib, 0, n, 1, True, heads)
    return heads


def _eisner_tables(S):
    N = S.shape[0]
    C = np.full((N, N, 2), NEG)
    Inc = np.full((N, N, 2), NEG)
    Cb = np.zeros((N, N, 2), dtype=np.int64)
    Ib = np.zeros((N, N, 2), dtype=np.int64)
    for s in range(N):
        C[s, s, :] = 0.0
    for width in range(1, N):
        for s in range(N - width):
            t = s + width
            # Incomplete (Inc): an arc between s and t over C[s, r, right] + C[r+1, t, left].
            base = C[s, s:t, 1] + C[s + 1:t + 1, t, 0]                       # (t - s,)
            r = int(np.argmax(base))
            Inc[s, t, 0] = base[r] + S[t, s]                                     # t -> s
            Inc[s, t, 1] = base[r] + S[s, t]                                     # s -> t
            Ib[s, t, :] = s + r
            # Complete, head at t: C[s, r, left] + I[r, t, left].
            left = C[s, s:t, 0] + Inc[s:t, t, 0]
            r = int(np.argmax(left))
            C[s, t, 0], Cb[s, t, 0] = left[r], s + r
            # Complete, head at s: I[s, r, right] + C[r, t, right].
            right = Inc[s, s + 1:t + 1, 1] + C[s + 1:t + 1, t, 1]
            r = int(np.argmax(right))
            C[s, t, 1], Cb[s, t, 1] = right[r], s + 1 + r
    return C, Inc, Cb, Ib


def _backtrack(Cb, Ib, s, t, d, complete, heads) -> None:
    stack = [(s, t, d, complete)]
    while stack:
        s, t, d, complete = stack.pop()
        if s == t:
            continue
        if complete:
            r = Cb[s, t, d]
            if d == 0:
                stack += [(s, r, 0, True), (r, t, 0, False)]
            else:
                stack += [(s, r, 1, False), (r, t, 1, True)]
        else:
            r = Ib[s, t, d]
            if d == 0:
                heads[s] = t
            else:
                heads[t] = s
            stack += [(s, r, 1, True), (r + 1, t, 0, True)]


# --- Chu-Liu-Edmonds ------------------------------------------------------------------------------
def chu_liu_edmonds(scores, single_root: bool = True) -> np.ndarray:
    """The highest-scoring arborescence rooted at 0 (Chu & Liu 1965, Edmonds 1967). single_root:
    every root arc is lowered by a constant larger than any possible score difference, so the best
    tree uses exactly one of them and is the best such tree."""
    S = _check_scores(scores)
    N = S.shape[0]
    S[:, 0] = NEG
    np.fill_diagonal(S, NEG)
    if single_root:
        finite = S[np.isfinite(S)]
        if finite.size:
            spread = float(finite.max() - finite.min())
            S[0, 1:] -= (spread + 1.0) * N
    heads = _cle(S)
    if not all(np.isfinite(S[h, m]) for m, h in enumerate(heads) if m > 0):
        raise ValueError("no tree has a finite score")
    return heads


def _find_cycle(heads) -> list[int] | None:
    N = len(heads)
    color = [0] * N          # 0 unvisited, 1 on the current path, 2 done
    color[0] = 2
    for start in range(1, N):
        path, v = [], start
        while color[v] == 0:
            color[v] = 1
            path.append(v)
            v = heads[v]
        if color[v] == 1:                                  # closed a cycle through v
            return path[path.index(v):]
        for u in path:
            color[u] = 2
    return None


def _cle(S: np.ndarray) -> np.ndarray:
    N = S.shape[0]
    heads = S.argmax(axis=0)
    heads[0] = -1
    cycle = _find_cycle(heads)
    if cycle is None:
        return heads
    in_cycle = np.zeros(N, dtype=bool)
    in_cycle[cycle] = True
    rest = [v for v in range(N) if not in_cycle[v]]       # includes the root 0
    C = np.array(cycle)
    c = len(rest)                                          # the contracted node in the new graph
    S2 = np.full((c + 1, c + 1), NEG)
    S2[:c, :c] = S[np.ix_(rest, rest)]
    # Into the cycle at v: replace v's cycle arc, gaining S[u, v] - S[heads[v], v].
    enter = S[np.ix_(rest, C)] - S[heads[C], C][None, :]                     # (|rest|, |C|)
    best_in = enter.argmax(axis=1)
    S2[:c, c] = enter.max(axis=1)
    # Out of the cycle: the best cycle node as head of w.
    leave = S[np.ix_(C, rest)]                                                # (|C|, |rest|)
    best_out = leave.argmax(axis=0)
    S2[c, :c] = leave.max(axis=0)
    S2[:, 0] = NEG
    S2[c, c] = NEG
    sub = _cle(S2)
    out = heads.copy()
    for k, w in enumerate(rest):
        if w == 0:
            continue
        h = sub[k]
        out[w] = C[best_out[k]] if h == c else rest[h]
    u = sub[c]
    out[C[best_in[u]]] = rest[u]
    return out


# --- from impact matrices -------------------------------------------------------------------------
def root_scores(F) -> np.ndarray:
    """(n,) how much masking each word perturbs the others: column sums of F (diagonal excluded)."""
    F = np.asarray(F, dtype=np.float64)
    return F.sum(axis=0) - np.diag(F)


def arc_scores(F, root: str | int = "impact") -> np.ndarray:
    """(n+1, n+1) arc scores from an (n, n) impact matrix: S[h, m] = F[m-1][h-1] for words, and one
    allowed root arc, to the chosen root word (`impact`) or to the given gold root (1-based)."""
    F = np.asarray(F, dtype=np.float64)
    if F.ndim != 2 or F.shape[0] != F.shape[1]:
        raise ValueError(f"arc_scores takes one (n, n) impact matrix, got shape {F.shape}")
    if np.isnan(F).any():
        raise ValueError("the impact matrix has NaN entries: parsing needs pairs='all'")
    n = F.shape[0]
    if isinstance(root, str):
        if root not in ROOTS:
            raise ValueError(f"unknown root choice {root!r}; valid: {', '.join(ROOTS)} or a 1-based gold root")
        r = int(np.argmax(root_scores(F))) + 1
    else:
        r = int(root)
        if not 1 <= r <= n:
            raise ValueError(f"gold root {r} is not a word of this {n}-word sentence")
    S = np.full((n + 1, n + 1), NEG)
    S[1:, 1:] = F.T                                        # S[h, m] = F[m, h]
    np.fill_diagonal(S, NEG)
    S[0, r] = 0.0
    return S


def parse_dependencies(F, algorithm: str = "eisner", root: str | int = "impact") -> list[int]:
    """Heads of the n words (1-based, 0 = root) from an impact matrix."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown dependency algorithm {algorithm!r}; valid: {', '.join(ALGORITHMS)}")
    S = arc_scores(F, root)
    heads = eisner(S) if algorithm == "eisner" else chu_liu_edmonds(S)
    return [int(h) for h in heads[1:]]


def right_chain(n: int) -> list[int]:
    """Baseline: every word headed by the next one, the last by the root."""
    return [m + 1 if m < n else 0 for m in range(1, n + 1)]
