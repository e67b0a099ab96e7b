"""Tree decoders against brute force: Eisner returns the best projective tree and Chu-Liu-Edmonds
the best arborescence (over every head assignment, n <= 6); the block-mean MART's and the seed's
splits equal an exhaustive search of their objective (the authors' MART: test_probing_mart.py)."""

import itertools

import numpy as np
import pytest

from components.probing.constituency import (
    left_branching,
    mart_block_means,
    nested,
    parse_constituency,
    right_branching,
    seed_tree,
    split_objective,
    to_brackets,
    tree_leaves,
    tree_spans,
)
from components.probing.dependency import (
    arc_scores,
    chu_liu_edmonds,
    eisner,
    is_projective,
    is_tree,
    parse_dependencies,
    right_chain,
    root_scores,
    tree_score,
)


def all_trees(n):
    """Every head assignment of n words that is a tree rooted at 0."""
    for heads in itertools.product(*[[h for h in range(n + 1) if h != m] for m in range(1, n + 1)]):
        full = (-1, *heads)
        if is_tree(full):
            yield full


TREES = {n: list(all_trees(n)) for n in range(1, 7)}


def brute_best(S, projective, single_root):
    best, arg = -np.inf, None
    for heads in TREES[S.shape[0] - 1]:
        if single_root and sum(h == 0 for h in heads[1:]) != 1:
            continue
        if projective and not is_projective(heads):
            continue
        s = tree_score(S, heads)
        if s > best:
            best, arg = s, heads
    return best, arg


def test_tree_enumeration_counts():
    # Cayley: (n+1)^(n-1) rooted labelled trees over n words plus the root.
    assert [len(TREES[n]) for n in range(1, 7)] == [(n + 1) ** (n - 1) for n in range(1, 7)]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("single_root", [True, False])
def test_eisner_and_cle_equal_brute_force(n, single_root):
    rng = np.random.default_rng(100 * n + single_root)
    for _ in range(12 if n < 6 else 3):
        S = rng.normal(size=(n + 1, n + 1))
        for decoder, projective in ((eisner, True), (chu_liu_edmonds, False)):
            heads = decoder(S, single_root=single_root)
            assert is_tree(heads)
            if projective:
                assert is_projective(heads)
            if single_root:
                assert sum(h == 0 for h in heads[1:]) == 1
            best, arg = brute_best(S, projective, single_root)
            assert tree_score(S, heads) == pytest.approx(best, abs=1e-9)
            assert tuple(heads) == arg                       # continuous scores: the optimum is unique


def test_cle_finds_non_projective_trees_and_eisner_does_not():
    # Arcs 2 -> 4 and 3 -> 1 cross: the best arborescence is non-projective.
    S = np.full((5, 5), -10.0)
    S[0, 2], S[2, 4], S[3, 1], S[2, 3] = 0, 5, 5, 5
    cle = chu_liu_edmonds(S)
    assert tuple(cle) == (-1, 3, 0, 2, 2) and not is_projective(cle)
    eis = eisner(S)
    assert is_projective(eis) and tree_score(S, eis) < tree_score(S, cle)


def test_forbidden_arcs_and_gold_root():
    rng = np.random.default_rng(0)
    F = rng.random((5, 5))
    np.fill_diagonal(F, 0)
    for root in (1, 3, 5):
        S = arc_scores(F, root=root)
        for decoder, projective in ((eisner, True), (chu_liu_edmonds, False)):
            heads = decoder(S)
            assert heads[root] == 0 and sum(h == 0 for h in heads[1:]) == 1
            assert tree_score(S, heads) == pytest.approx(brute_best(S, projective, True)[0])
    # Without gold: the word whose masking perturbs the others most.
    r = int(np.argmax(root_scores(F))) + 1
    assert parse_dependencies(F, "eisner").index(0) + 1 == r
    assert parse_dependencies(F, "chu_liu_edmonds", root=2).index(0) + 1 == 2
    # Arc h -> m scores the impact of h on m.
    assert arc_scores(F)[2, 4] == F[3, 1]


def test_dependency_errors():
    F = np.zeros((3, 3))
    with pytest.raises(ValueError, match="unknown dependency algorithm"):
        parse_dependencies(F, "arcstandard")
    with pytest.raises(ValueError, match="unknown root choice"):
        parse_dependencies(F, root="cls")
    with pytest.raises(ValueError, match="not a word"):
        parse_dependencies(F, root=4)
    F[0, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        parse_dependencies(F)
    assert right_chain(3) == [2, 3, 0]


# --- constituency -----------------------------------------------------------------------------------
def objective_by_blocks(F, i, j, k):
    """The objective straight from its definition (numpy means of sub-blocks)."""
    L, R = slice(i, k), slice(k, j)
    return F[L, L].mean() + F[R, R].mean() - F[L, R].mean() - F[R, L].mean()


def brute_block_means(F, i, j):
    if j - i == 1:
        return i
    k = max(range(i + 1, j), key=lambda k: (objective_by_blocks(F, i, j, k), -k))
    return (brute_block_means(F, i, k), brute_block_means(F, k, j))


def brute_seed(F, words):
    """A transcription of the seed's build_tree on sub-matrices (bojone/perturbed_masking)."""
    if len(words) == 1:
        return words[0]
    if len(words) == 2:
        return (words[0], words[1])
    scores = [F[:i, :i].mean() + F[i:, i:].mean() - F[:i, i:].mean() - F[i:, :i].mean()
              for i in range(1, len(words) - 1)]
    k = int(np.argmax(scores)) + 1
    return (brute_seed(F[:k, :k], words[:k]), (words[k], brute_seed(F[k + 1:, k + 1:], words[k + 1:])))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
def test_block_means_and_seed_equal_exhaustive_search(n):
    rng = np.random.default_rng(n)
    for _ in range(20):
        F = rng.random((n, n))
        np.fill_diagonal(F, 0)
        assert mart_block_means(F) == brute_block_means(F, 0, n)
        assert seed_tree(F) == brute_seed(F, list(range(n)))
        for i, j in [(0, n)] + [(a, b) for a in range(n) for b in range(a + 2, n + 1)][:10]:
            for k in range(i + 1, j):
                assert split_objective(F, i, j, k) == pytest.approx(objective_by_blocks(F, i, j, k))
        assert tree_leaves(mart_block_means(F)) == list(range(n))


def test_block_means_recovers_a_block_structure():
    # Words {0,1,2} and {3,4} impact each other strongly inside, weakly across; inside the first
    # block {0,1} are tighter still.
    F = np.full((5, 5), 0.1)
    F[:3, :3], F[3:, 3:], F[:2, :2] = 1.0, 1.0, 2.0
    np.fill_diagonal(F, 0)
    assert mart_block_means(F) == parse_constituency(F, "mart_block_means") == (((0, 1), 2), (3, 4))
    assert tree_spans(mart_block_means(F)) == {(0, 2), (0, 3), (3, 5), (0, 5)}


def test_branching_baselines_and_rendering():
    assert right_branching(4) == (0, (1, (2, 3)))
    assert left_branching(4) == (((0, 1), 2), 3)
    assert tree_spans(right_branching(4)) == {(2, 4), (1, 4), (0, 4)}
    assert right_branching(1) == 0 and tree_spans(0) == set()
    words = ["the", "(big)", "dog"]
    assert to_brackets((0, (1, 2)), words) == "(the (-LRB-big-RRB- dog))"
    assert nested((0, (1, 2)), words) == ["the", ["(big)", "dog"]]
    with pytest.raises(ValueError, match="unknown constituency algorithm"):
        parse_constituency(np.zeros((3, 3)), "cky")
    bad = np.zeros((3, 3))
    bad[0, 1] = np.nan
    for algorithm in ("mart", "mart_block_means", "seed"):
        with pytest.raises(ValueError, match="NaN"):
            parse_constituency(bad, algorithm)
