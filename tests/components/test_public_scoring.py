"""Readers and scorers of the public benchmarks, on hand-computed examples and on small subsets of
the real sets (read from ../shared/data beside the repository, never copied into it)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from components.metrics import mean_reciprocal_rank, recall_at_k
from components.probing.baselines import PMI, left_chain, random_projective, right_chain
from components.probing.dependency import is_projective, is_tree
from components.probing.evaluate import attachment_scores, segmentation_scores
from components.probing.sighan import SighanFormatError, align_raw_gold, read_gold, read_raw, read_word_list
from components.probing.treebank import read_conllu
from components.textsim import TfIdf, char_ngrams, jaccard, spearman

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"public evaluation data not found at {path}")
    return path


# --- SIGHAN format and the bakeoff's scoring -------------------------------------------------------
def test_sighan_readers_keep_line_numbers_and_check_alignment():
    raw = read_raw("\ufeff我爱北京\r\n\r\n  天安门 \r\n")
    gold = read_gold("我  爱  北京\r\n\r\n天安门\u3000\r\n")
    assert raw == [(1, "我爱北京"), (3, "天安门")]
    assert gold == [(1, ["我", "爱", "北京"]), (3, ["天安门"])]
    assert align_raw_gold(raw, gold) == [(1, "我爱北京", ["我", "爱", "北京"]), (3, "天安门", ["天安门"])]
    assert read_word_list("北京\n 天安门 \n\n") == {"北京", "天安门"}
    with pytest.raises(SighanFormatError, match=":3: gold words"):
        align_raw_gold(raw, [(1, ["我", "爱", "北京"]), (3, ["天", "安"])])
    with pytest.raises(SighanFormatError, match="no gold line for raw line 3"):
        align_raw_gold(raw, gold[:1])


def test_segmentation_scores_by_hand():
    # gold: 我 | 喜欢 | 北京 | 天安门 ; pred: 我 | 喜 | 欢 | 北京天安门 ... and a second sentence.
    gold = [["我", "喜欢", "北京", "天安门"], ["他", "来", "了"]]
    pred = [["我", "喜", "欢", "北京天安门"], ["他", "来了"]]
    words = {"我", "喜欢", "北京", "他", "来"}       # 天安门 and 了 are OOV
    s = segmentation_scores(pred, gold, words)
    # correct spans: 我, 他 -> 2; predicted 6; gold 7.
    assert (s["correct"], s["predicted"], s["gold"]) == (2, 6, 7)
    assert s["precision"] == pytest.approx(2 / 6) and s["recall"] == pytest.approx(2 / 7)
    assert s["f1"] == pytest.approx(2 * (2 / 6) * (2 / 7) / (2 / 6 + 2 / 7))
    assert s["oov_rate"] == pytest.approx(2 / 7) and s["oov_recall"] == 0.0
    assert s["iv_recall"] == pytest.approx(2 / 5)
    # A correct OOV word counts for OOV recall only.
    s = segmentation_scores([["我", "喜欢", "北京", "天安门"]], [gold[0]], words)
    assert (s["oov_recall"], s["iv_recall"], s["f1"]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="differ in text"):
        segmentation_scores([["我"]], [["你"]])


def test_pmi_scores_pairs_that_stand_together_higher():
    pmi = PMI.fit(["北京天安门", "北京大学", "我爱北京", "天安门广场", "大学 生活"])
    assert pmi.pair("北", "京") > pmi.pair("京", "天") > pmi.pair("京", "活")
    assert math.isfinite(pmi.pair("龘", "龘"))
    assert pmi.bigrams[("学", "生")] == 0                         # bigrams never cross whitespace
    assert pmi.scores(["北", "京", "大", "学"]).shape == (3,)


def test_chain_and_random_trees_are_projective_trees():
    assert right_chain(3) == [2, 3, 0] and left_chain(3) == [0, 1, 2]
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 9):
        heads = random_projective(n, rng)
        full = [-1, *heads]
        assert is_tree(full) and is_projective(full) and heads.count(0) == 1
    # Right- and left-chain have the same undirected edges: equal UUAS, different UAS.
    gold = [[2, 0, 2, 3]]
    r, lft = attachment_scores([right_chain(4)], gold), attachment_scores([left_chain(4)], gold)
    assert r["uuas"] == lft["uuas"] and (r["uas"], lft["uas"]) == (0.25, 0.5)


# --- ranking and similarity ------------------------------------------------------------------------
def test_mrr_and_recall_by_hand_with_ties():
    scores = [[0.9, 0.5, 0.1], [0.2, 0.7, 0.7], [1.0, 1.0, 1.0]]
    positives = [0, 1, 2]
    # ranks: 1; tie for 1-2 -> E[1/r] = (1 + 1/2)/2; three-way tie -> (1 + 1/2 + 1/3)/3.
    expected = (1 + 0.75 + (1 + 0.5 + 1 / 3) / 3) / 3
    assert mean_reciprocal_rank(scores, positives) == pytest.approx(expected)
    assert recall_at_k(scores, positives, 1) == pytest.approx((1 + 0.5 + 1 / 3) / 3)
    constant = [[0.0] * 10]
    assert recall_at_k(constant, [3], 2) == pytest.approx(0.2)
    assert mean_reciprocal_rank(constant, [3]) == pytest.approx(sum(1 / r for r in range(1, 11)) / 10)


def test_spearman_tfidf_and_jaccard_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties share their mean rank: x ranks 1.5, 1.5, 3; y ranks 1, 2, 3.
    rx, ry = np.array([1.5, 1.5, 3]) - 2, np.array([1, 2, 3]) - 2
    assert spearman([5, 5, 7], [1, 2, 3]) == pytest.approx((rx @ ry) / math.sqrt((rx @ rx) * (ry @ ry)))
    assert char_ngrams("一 个人") == ["一", "个", "人", "一个", "个人"]
    idf = TfIdf.fit([["a", "b"], ["a"], ["c"]])
    assert idf.idf("a") == pytest.approx(math.log(4 / 3) + 1) and idf.idf("zz") == pytest.approx(math.log(4) + 1)
    wa, wb = idf.idf("a"), idf.idf("b")
    assert idf.cosine(["a", "b"], ["a"]) == pytest.approx(wa / math.sqrt(wa * wa + wb * wb))
    assert idf.cosine(["a"], ["c"]) == 0.0
    assert jaccard("一个人", "一个猫") == pytest.approx(2 / 4)


# --- the real sets, small subsets ------------------------------------------------------------------
def test_pku_subset_reads_aligns_and_scores():
    raw = read_raw(shared("sighan2005", "pku_test.utf8").read_text(encoding="utf-8"))
    gold = read_gold(shared("sighan2005", "pku_test_gold.utf8").read_text(encoding="utf-8"))
    words = read_word_list(shared("sighan2005", "pku_training_words.utf8").read_text(encoding="utf-8"))
    assert len(raw) == len(gold) == 1944 and len(words) > 50_000
    rows = align_raw_gold(raw[:300], [g for g in gold if g[0] <= raw[299][0]])
    gold_words = [w for _, _, w in rows]
    perfect = segmentation_scores(gold_words, gold_words, words)
    assert perfect["f1"] == 1.0 and 0.0 < perfect["oov_rate"] < 0.15
    single = segmentation_scores([list("".join(w)) for w in gold_words], gold_words, words)
    assert single["precision"] < single["recall"] < 1.0        # more predicted words than gold ones


def test_conllu_readers_skip_ranges_and_empty_nodes():
    text = ("# text = I'm here\n1-2\tI'm\t_\t_\t_\t_\t_\t_\t_\t_\n1\tI\tI\tPRON\t_\t_\t2\tnsubj\t_\t_\n"
            "2\t'm\tbe\tAUX\t_\t_\t0\troot\t_\t_\n2.1\tx\tx\tX\t_\t_\t_\t_\t_\t_\n"
            "3\there\there\tADV\t_\t_\t2\tadvmod\t_\t_\n\n")
    (s,) = read_conllu(text)
    assert s.words == ["I", "'m", "here"] and s.heads == [2, 0, 2] and s.upos == ["PRON", "AUX", "ADV"]
    pud = read_conllu(shared("ud-english-pud", "en_pud-ud-test.conllu").read_text(encoding="utf-8"))
    gsd = read_conllu(shared("ud-chinese-gsdsimp", "zh_gsdsimp-ud-dev.conllu").read_text(encoding="utf-8"))
    assert len(pud) == 1000 and len(gsd) == 500
    assert sum(len(s.words) for s in pud) == 21180          # the lines whose id is an integer
    assert all(s.heads.count(0) == 1 for s in gsd[:200])


def test_char_scores_of_every_layer_match_one_layer_at_a_time(make_model, tokenizer):
    from components.probing import ImpactOptions
    from components.probing.prober import Prober
    model = make_model(seed=1)
    texts = ["我们在北京，大学生活", "他来了"]
    every = Prober(model, tokenizer, ImpactOptions(layer=-1)).char_scores(texts, all_layers=True)
    for layer in (1, 2):
        one = Prober(model, tokenizer, ImpactOptions(layer=layer)).char_scores(texts)
        for (chars_a, a), (chars_b, b) in zip(every, one):
            assert chars_a == chars_b and a.shape == (2, len(chars_a) - 1)
            np.testing.assert_allclose(a[layer - 1], b, rtol=1e-5, atol=1e-6)
    assert np.isneginf(every[0][1][:, 5]).all()             # the forced cut after "，"
