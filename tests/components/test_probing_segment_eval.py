"""Segmentation scores and thresholds, the evaluation functions on hand-worked examples, and the
CoNLL-U / bracketed-tree readers."""

import numpy as np
import pytest

from components.probing.evaluate import (
    attachment_scores,
    bracket_f1,
    prf,
    segmentation_prf,
)
from components.probing.segment import (
    best_fixed_threshold,
    boundary_scores,
    choose_threshold,
    fit_gmm,
    gmm_threshold,
    otsu_threshold,
    segment,
    split_pieces,
    words_from_boundaries,
)
from components.probing.treebank import TreebankError, read_bracketed, read_conllu


# --- segmentation ------------------------------------------------------------------------------------
def test_boundary_scores_are_the_two_sided_average():
    F = np.array([[0, 4, 9], [2, 0, 1], [9, 5, 0]], dtype=float)
    np.testing.assert_allclose(boundary_scores(F), [(4 + 2) / 2, (1 + 5) / 2])


def test_segment_joins_at_or_above_the_threshold():
    units = list("我爱北京")
    assert segment(units, [1.0, 1.0, 5.0], 3.0) == ["我", "爱", "北京"]
    assert segment(units, [3.0, 1.0, 5.0], 3.0) == ["我爱", "北京"]
    assert segment(units, [9.0, -np.inf, 9.0], 3.0) == ["我爱", "北京"]      # -inf: a forced boundary
    assert segment(["好"], [], 1.0) == ["好"]
    with pytest.raises(ValueError, match="need 3 scores"):
        segment(units, [1.0], 1.0)
    assert words_from_boundaries(units, [False, True, False]) == ["我爱", "北京"]


def test_otsu_equals_exhaustive_between_class_variance():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(1.0, 0.3, 300), rng.normal(4.0, 0.8, 200), [np.inf, -np.inf]])
    t = otsu_threshold(x)
    finite = np.sort(x[np.isfinite(x)])

    def between(k):
        a, b = finite[:k], finite[k:]
        return len(a) * len(b) / len(finite) ** 2 * (a.mean() - b.mean()) ** 2
    k = max(range(1, len(finite)), key=between)
    assert t == pytest.approx((finite[k - 1] + finite[k]) / 2)
    assert 1.5 < t < 3.5
    with pytest.raises(ValueError, match="two distinct"):
        otsu_threshold([2.0, 2.0, np.inf])


def test_gmm_recovers_a_mixture():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0.0, 1.0, 4000), rng.normal(6.0, 1.0, 4000)])
    w, mu, sd = fit_gmm(x)
    np.testing.assert_allclose(mu, [0.0, 6.0], atol=0.1)
    np.testing.assert_allclose(sd, [1.0, 1.0], atol=0.1)
    np.testing.assert_allclose(w, [0.5, 0.5], atol=0.03)
    assert gmm_threshold(x) == pytest.approx(3.0, abs=0.15)                # equal weights and widths
    # A heavier low component pushes the crossing towards the high one.
    y = np.concatenate([rng.normal(0.0, 1.0, 9000), rng.normal(6.0, 1.0, 1000)])
    assert gmm_threshold(y) > 3.2


def test_choose_threshold():
    rng = np.random.default_rng(2)
    x = np.exp(np.concatenate([rng.normal(0, 0.2, 500), rng.normal(1.5, 0.2, 500)]))
    for method in ("otsu", "gmm"):
        t = choose_threshold(x, method, log=True)
        assert np.exp(0.4) < t < np.exp(1.1)
    with pytest.raises(ValueError, match="unknown threshold method 'median'"):
        choose_threshold(x, "median")
    with pytest.raises(ValueError, match="positive"):
        choose_threshold(-x, "otsu", log=True)


def test_best_fixed_threshold_is_the_oracle():
    units = [list("我爱北京"), list("你好")]
    gold = [["我", "爱", "北京"], ["你好"]]
    scores = [[1.0, 2.0, 5.0], [4.0]]
    t, f1 = best_fixed_threshold(scores, gold, units)
    assert f1 == 1.0 and 2.0 < t <= 4.0


def test_split_pieces():
    assert split_pieces("我们，在北京。好", 50) == ["我们，", "在北京。", "好"]
    assert split_pieces("一二三四五", 2) == ["一二", "三四", "五"]
    assert "".join(split_pieces("——（附图片１张）", 3)) == "——（附图片１张）"


# --- evaluation: hand-worked examples ----------------------------------------------------------------
def test_segmentation_prf_by_hand():
    # gold spans (0,2) (2,3) (3,5); predicted (0,1) (1,3) (3,5): one correct of three each.
    r = segmentation_prf([["我", "们在", "北京"]], [["我们", "在", "北京"]])
    assert (r.correct, r.predicted, r.gold) == (1, 3, 3)
    assert r.precision == pytest.approx(1 / 3) and r.recall == pytest.approx(1 / 3) and r.f1 == pytest.approx(1 / 3)
    # Micro-averaged over sentences: (1 + 2) correct of (3 + 2) predicted and (3 + 3) gold.
    r = segmentation_prf([["我", "们在", "北京"], ["今天", "好"]], [["我们", "在", "北京"], ["今", "天", "好"]])
    assert (r.correct, r.predicted, r.gold) == (2, 5, 6)
    assert r.precision == pytest.approx(2 / 5) and r.recall == pytest.approx(2 / 6)
    assert r.f1 == pytest.approx(2 * 0.4 * (1 / 3) / (0.4 + 1 / 3))
    with pytest.raises(ValueError, match="differ in text"):
        segmentation_prf([["我"]], [["你"]])
    assert prf(0, 0, 0).f1 == 0.0


def test_attachment_scores_by_hand():
    # gold: 1 <- 2 -> 3 (2 is the root); predicted: 2 -> 1 -> 3.
    gold, pred = [2, 0, 2], [2, 0, 1]
    s = attachment_scores([pred], [gold])
    assert s["uas"] == pytest.approx(2 / 3)
    # undirected gold edges {1-2, 2-3}, predicted {1-2, 1-3}: one of two.
    assert s["uuas"] == pytest.approx(1 / 2)
    # Direction does not matter for UUAS: 1 -> 2 -> 3 (1 the root) has gold's two edges, but only
    # word 3 keeps its gold head.
    s = attachment_scores([[0, 1, 2]], [gold])
    assert s["uas"] == pytest.approx(1 / 3) and s["uuas"] == pytest.approx(1.0)
    # Leaving out a word (e.g. punctuation) removes it and its edge.
    s = attachment_scores([pred], [gold], keep=[[True, True, False]])
    assert (s["uas"], s["uuas"], s["words"], s["edges"]) == (1.0, 1.0, 2, 1)


def test_bracket_f1_by_hand():
    gold = {(0, 2), (2, 4), (0, 4)}                        # ((a b) (c d))
    pred = {(2, 4), (1, 4), (0, 4)}                        # (a (b (c d)))
    r = bracket_f1([pred], [gold], [4])                    # whole span dropped: {(0,2),(2,4)} vs {(1,4),(2,4)}
    assert r["sentence_f1"] == pytest.approx(0.5) and r["corpus_f1"] == pytest.approx(0.5)
    r = bracket_f1([pred], [gold], [4], drop_whole=False)  # 2 of 3 each
    assert r["sentence_f1"] == pytest.approx(2 / 3)
    # Sentence average vs corpus: (1.0 + 0.0) / 2 vs 1 correct of 1 + 2 predicted, 1 + 2 gold.
    r = bracket_f1([{(0, 2)}, {(0, 2), (1, 3)}], [{(0, 2)}, {(2, 4), (3, 5)}], [3, 5])
    assert r["sentence_f1"] == pytest.approx(0.5) and r["corpus_f1"] == pytest.approx(1 / 3)
    # A two-word sentence has nothing to score once the whole span is dropped.
    assert bracket_f1([{(0, 2)}], [{(0, 2)}], [2])["sentences"] == 0


# --- readers --------------------------------------------------------------------------------------
CONLLU = """# sent_id = 1
# text = The dog barked.
1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_
2\tdog\tdog\tNOUN\tNN\t_\t3\tnsubj\t_\t_
3\tbarked\tbark\tVERB\tVBD\t_\t0\troot\t_\t_
4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

1-2\tdu\t_\t_\t_\t_\t_\t_\t_\t_
1\tde\tde\tADP\t_\t_\t2\tcase\t_\t_
2\tle\tle\tDET\t_\t_\t0\troot\t_\t_
2.1\tx\t_\t_\t_\t_\t_\t_\t_\t_
"""


def test_read_conllu():
    sents = read_conllu(CONLLU)
    assert [s.words for s in sents] == [["The", "dog", "barked", "."], ["de", "le"]]
    assert sents[0].heads == [2, 3, 0, 3] and sents[0].root == 3 and sents[0].upos[3] == "PUNCT"
    assert sents[1].heads == [2, 0]
    with pytest.raises(TreebankError, match=":1: expected 10"):
        read_conllu("1\tThe\tthe\n")
    with pytest.raises(TreebankError, match="head 5 is not a word"):
        read_conllu("1\ta\ta\tX\tX\t_\t5\tdep\t_\t_\n")
    with pytest.raises(TreebankError, match="no root"):
        read_conllu("1\ta\ta\tX\tX\t_\t2\tdep\t_\t_\n2\tb\tb\tX\tX\t_\t1\tdep\t_\t_\n")


def test_read_bracketed():
    ptb = """( (S (NP-SBJ (DT The) (NN dog))
          (VP (VBD barked) (NP (-NONE- *T*-1)))
          (. .)) )
(S (NP (PRP It)) (VP (VBD ran)))"""
    trees = read_bracketed(ptb)
    assert trees[0].words == ["The", "dog", "barked", "."]
    assert trees[0].spans == {(0, 2), (0, 4)}                   # VP over "barked" alone is one word
    assert trees[1].words == ["It", "ran"] and trees[1].spans == {(0, 2)}
    plain = read_bracketed("((the dog) (barked -LRB- loudly -RRB-))", labeled=False)[0]
    assert plain.words == ["the", "dog", "barked", "(", "loudly", ")"]
    assert plain.spans == {(0, 2), (2, 6), (0, 6)}
    plain = read_bracketed("((the dog) barked)", labeled=False)[0]
    assert plain.words == ["the", "dog", "barked"] and plain.spans == {(0, 2), (0, 3)}
    with pytest.raises(TreebankError, match="missing a closing bracket"):
        read_bracketed("(S (NP the)")
    with pytest.raises(TreebankError, match="outside a tree"):
        read_bracketed("dog (S (NN cat))")
