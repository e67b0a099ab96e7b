"""The authors' MART (Wu et al., ACL 2020, as their public code runs it): score preparation, cut and
tree on hand-made matrices worked out by hand, and on random matrices against a brute-force search
written here from the definition (plain loops, no slicing shared with the implementation)."""

import math

import numpy as np
import pytest

from components.probing.constituency import (
    best_cut,
    cut_score,
    mart,
    mart_block_means,
    mart_scores,
    mart_tree,
    migrate_settings,
    parse_constituency,
    tree_leaves,
    tree_spans,
)


# --- the definition, written out ------------------------------------------------------------------
def prepare_by_hand(F):
    """Column softmax, diagonal 0, 1 - x, diagonal 0; entry by entry."""
    n = len(F)
    S = [[0.0] * n for _ in range(n)]
    for j in range(n):
        total = sum(math.exp(F[r][j]) for r in range(n))
        for i in range(n):
            S[i][j] = 0.0 if i == j else 1.0 - math.exp(F[i][j]) / total
    return np.array(S)


def objective(S, words, k, weights="authors", keep_k_out=True):
    """score(k) over the span `words` (absolute indices). weights="authors": 2k, 2(m-k), k(m-k);
    "sizes": the blocks' own sizes (an empty block counts 0). keep_k_out=False puts word k into R."""
    m = len(words)
    L = words[:k]
    R = words[k + 1:] if keep_k_out else words[k:]
    if weights == "authors":
        wl, wr, wb = 2 * k, 2 * (m - k), k * (m - k)
    else:
        wl, wr, wb = (max(1, len(L) ** 2), max(1, len(R) ** 2), max(1, len(L) * len(R)))
    within_l = sum(S[a][b] for a in L for b in L)
    within_r = sum(S[a][b] for a in R for b in R)
    across = sum(S[a][b] for a in L for b in R) + sum(S[b][a] for a in L for b in R)
    return within_l / wl + within_r / wr - across / wb


def argmin_cut(S, words, **variant):
    values = [objective(S, words, k, **variant) for k in range(1, len(words))]
    return 1 + min(range(len(values)), key=lambda x: (values[x], x))      # the first on ties


def brute_tree(S, words):
    if len(words) == 1:
        return words[0]
    k = argmin_cut(S, words)
    rest = words[k + 1:]
    right = words[k] if not rest else (words[k], brute_tree(S, rest))
    return (brute_tree(S, words[:k]), right)


# --- hand-made matrices -----------------------------------------------------------------------------
def test_score_preparation_by_hand_and_its_effect_on_the_cut():
    # F = ln A, so that the column softmax is A / column sum exactly. Words 0, 1, 2 impact each
    # other (ln 2), word 3 neither impacts nor is impacted (0).
    A = np.array([[1, 2, 2, 1],
                  [2, 1, 2, 1],
                  [2, 2, 1, 1],
                  [1, 1, 1, 1]], dtype=float)
    F = np.log(A)
    # Column sums 6, 6, 6, 4 -> softmax A[i][j] / sum_j; diagonal 0; 1 - x; diagonal 0:
    #   S[i][j] = 1 - 2/6 = 2/3 among words 0-2, S[i][3] = 1 - 1/4 = 3/4, S[3][j] = 1 - 1/6 = 5/6.
    S = np.array([[0, 2 / 3, 2 / 3, 3 / 4],
                  [2 / 3, 0, 2 / 3, 3 / 4],
                  [2 / 3, 2 / 3, 0, 3 / 4],
                  [5 / 6, 5 / 6, 5 / 6, 0]])
    assert np.allclose(mart_scores(F), S, atol=1e-15)
    assert np.allclose(mart_scores(F + 7.0), S)            # the global shift before exp changes nothing
    # Cuts of the whole sentence (m = 4):
    #   k=1: L={0}, R={2,3}: 0/2 + (3/4 + 5/6)/6 - (2/3 + 3/4 + 2/3 + 5/6)/3 = 19/72 - 70/72 = -17/24
    #   k=2: L={0,1}, R={3}: (4/3)/4 + 0/4 - (3/4 + 3/4 + 5/6 + 5/6)/4     = 1/3 - 19/24   = -11/24
    #   k=3: L={0,1,2}, R={}: 4/6 + 0 - 0                                                  =   2/3
    assert [cut_score(S, k) for k in (1, 2, 3)] == pytest.approx([-17 / 24, -11 / 24, 2 / 3])
    # min at k=1: (w0, (w1, tree({2,3}))) and a span of two words is (w2, w3).
    assert best_cut(S) == 1
    assert mart(F) == parse_constituency(F, "mart") == (0, (1, (2, 3)))
    # Without the column softmax (1 - F, diagonal 0: 1 - ln 2 = 0.3069 among words 0-2, 1 with word 3):
    #   k=1: (1 + 1)/6 - (0.3069 + 1 + 0.3069 + 1)/3 = 0.3333 - 0.8712 = -0.5379
    #   k=2: (2 * 0.3069)/4 - (1 + 1 + 1 + 1)/4      = 0.1534 - 1      = -0.8466   <- min
    #   k=3: (6 * 0.3069)/6                                            =  0.3069
    # so the preparation changes the tree: ((0, 1), (2, 3)) there.
    U = 1 - F
    np.fill_diagonal(U, 0)
    assert [cut_score(U, k) for k in (1, 2, 3)] == pytest.approx([-0.5379, -0.8466, 0.3069], abs=1e-4)
    assert mart_tree(U) == ((0, 1), (2, 3))
    # The block-mean variant on the raw F maximises: k=3 (mean F over {0,1,2}^2 = 6 ln2 / 9 = 0.462
    # against -0.770 at k=1 and -0.347 at k=2), then [0,3) ties at k=1 and k=2 (-2 ln2 / 3 each) and
    # takes the first: ((0, (1, 2)), 3).
    assert mart_block_means(F) == ((0, (1, 2)), 3)


def test_block_weights_2k_2m_minus_k_and_k_m_minus_k_change_the_cut():
    # Symmetric scores; S01 = S02 = S12 = S13 = 0.2, S03 = S23 = 0.4.
    S = np.array([[0, .2, .2, .4],
                  [.2, 0, .2, .2],
                  [.2, .2, 0, .4],
                  [.4, .2, .4, 0]])
    # The authors' weights 2k, 2(m-k), k(m-k), word k in neither block:
    #   k=1: L={0}, R={2,3}:  0      + 0.8/6 - (0.2+0.4+0.2+0.4)/3 = 0.1333 - 0.4 = -0.2667   <- min
    #   k=2: L={0,1}, R={3}:  0.4/4  + 0     - (0.4+0.2+0.4+0.2)/4 = 0.1    - 0.3 = -0.2
    #   k=3: L={0,1,2}:       1.2/6                                               =  0.2
    assert [cut_score(S, k) for k in (1, 2, 3)] == pytest.approx([-4 / 15, -0.2, 0.2])
    assert mart_tree(S) == (0, (1, (2, 3)))
    # The same with block sizes |L|^2, |R|^2, |L||R| as weights (block means):
    #   k=1: 0 + 0.8/4 - 1.2/2 = -0.4;  k=2: 0.4/4 + 0/1 - 1.2/2 = -0.5 <- min;  k=3: 1.2/9 = 0.1333
    words = [0, 1, 2, 3]
    assert [objective(S, words, k, weights="sizes") for k in (1, 2, 3)] == pytest.approx([-0.4, -0.5, 1.2 / 9])
    assert argmin_cut(S, words, weights="sizes") == 2 != best_cut(S)


def test_leaving_word_k_out_of_both_blocks_changes_the_cut():
    # S = 0.2 everywhere off the diagonal except S23 = S32 = 0.8.
    S = np.full((4, 4), 0.2)
    S[2, 3] = S[3, 2] = 0.8
    np.fill_diagonal(S, 0)
    # Word k in neither block:
    #   k=1: L={0}, R={2,3}: 0 + 1.6/6 - 0.8/3       =  0
    #   k=2: L={0,1}, R={3}: 0.4/4 + 0 - 0.8/4       = -0.1   <- min
    #   k=3: L={0,1,2}:      1.2/6                   =  0.2
    assert [cut_score(S, k) for k in (1, 2, 3)] == pytest.approx([0.0, -0.1, 0.2], abs=1e-12)
    assert mart_tree(S) == ((0, 1), (2, 3))
    # Word k inside R (R = k..3), the same weights:
    #   k=1: R={1,2,3}: 0 + 2(0.2+0.2+0.8)/6 - 2(0.2+0.2+0.2)/3           = 0.4 - 0.4 =  0
    #   k=2: R={2,3}:   0.4/4 + 1.6/4 - 2(0.2+0.2+0.2+0.2)/4             = 0.5 - 0.4 =  0.1
    #   k=3: R={3}:     1.2/6 + 0/2 - 2(0.2+0.2+0.8)/3                   = 0.2 - 0.8 = -0.6   <- min
    words = [0, 1, 2, 3]
    assert [objective(S, words, k, keep_k_out=False) for k in (1, 2, 3)] == pytest.approx([0.0, 0.1, -0.6])
    assert argmin_cut(S, words, keep_k_out=False) == 3 != best_cut(S)


def test_small_spans_and_ties():
    # Two words: the only cut is k=1 -> (w0, w1). Three words: score(1) = -(S02 + S20)/2 and
    # score(2) = (S01 + S10)/4, so with scores >= 0 the cut is k=1 -> (w0, (w1, w2)) unless S02 = S20 = 0.
    assert mart(np.zeros((1, 1))) == 0
    assert mart(np.array([[0, 5.0], [1.0, 0]])) == (0, 1)
    S3 = np.array([[0, .9, .1], [.9, 0, .5], [.1, .5, 0]])
    assert [cut_score(S3, k) for k in (1, 2)] == pytest.approx([-0.1, 0.45])
    assert mart_tree(S3) == (0, (1, 2))
    # All scores 0: every cut scores 0 and the first (k=1) wins, in every span.
    assert best_cut(np.zeros((4, 4))) == 1
    assert mart_tree(np.zeros((4, 4))) == (0, (1, (2, 3)))
    with pytest.raises(ValueError, match="at least one word"):
        mart(np.zeros((0, 0)))


# --- random matrices against the brute-force search -------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 9, 12])
def test_mart_equals_brute_force_on_random_matrices(n):
    rng = np.random.default_rng(40 + n)
    for trial in range(25):
        F = rng.random((n, n)) * (3.0 if trial % 2 else 0.5)
        np.fill_diagonal(F, 0)
        S = prepare_by_hand(F.tolist())
        assert np.allclose(mart_scores(F), S, atol=1e-12)
        words = list(range(n))
        for k in range(1, n):
            assert cut_score(S, k) == pytest.approx(objective(S, words, k), abs=1e-12)
        tree = mart(F)
        assert tree == brute_tree(S, words)
        assert tree_leaves(tree) == words and len(tree_spans(tree)) == max(0, n - 1)


def test_every_split_puts_word_k_at_the_front_of_the_right_part():
    def check(t):
        if isinstance(t, int):
            return
        left, right = t
        head = right if isinstance(right, int) else right[0]
        assert isinstance(head, int) and head == max(tree_leaves(left)) + 1
        check(left)
        if not isinstance(right, int):
            check(right[1])

    for seed in range(20):
        F = np.random.default_rng(seed).random((9, 9)) * 4
        np.fill_diagonal(F, 0)
        check(mart(F))


def test_stored_settings_from_before_the_authors_mart_keep_their_meaning():
    old = {"layer": -1, "constituency": "mart"}
    new, note = migrate_settings(old)
    assert new == {"layer": -1, "constituency": "mart_block_means", "format": 2}
    assert "reading it as 'mart_block_means'" in note and old["constituency"] == "mart"
    assert migrate_settings({"constituency": "seed"}) == ({"constituency": "seed", "format": 2}, None)
    assert migrate_settings({}) == ({"format": 2}, None)
    current = {"format": 2, "constituency": "mart"}
    assert migrate_settings(current) == (current, None)
