"""BLEU (CDial-GPT's conventions), distinct-n and R_n@k against NLTK and hand-worked values."""

import math

import pytest
from nltk.translate.bleu_score import SmoothingFunction
from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

from components.metrics import BLEU2, BLEU4, corpus_bleu, distinct_n, recall_at_k

# Fixed Chinese replies, character tokens as the dialog task uses them: exact and partial matches,
# a hypothesis shorter than 4 (no 3-/4-grams), a repeated character (clipping), no match at all,
# an empty reply, several references.
CASES = {
    "partial": ([["亲在的呢"], ["不客气哦"], ["好的亲发顺丰哦"]], ["亲在的", "不客气的哦", "发顺丰的哦亲"]),
    "short_and_clipped": ([["好的"], ["哈哈哈你好"]], ["好", "哈哈哈哈哈"]),
    "no_bigram_match": ([["今天天气"], ["快递到了"]], ["气天今", "了到递"]),
    "multi_reference": ([["亲在的呢", "在的亲"], ["稍等哦", "亲稍等一下"]], ["在的亲呢", "亲稍等"]),
    "empty_reply": ([["不客气哦"], ["好的"]], ["", "好的呀"]),
    "nothing_matches": ([["不客气哦"]], ["谢谢"]),
}


def tokens(case):
    refs, hyps = CASES[case]
    return [[list(r) for r in rs] for rs in refs], [list(h) for h in hyps]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("weights", [BLEU2, BLEU4, (1.0,), (1 / 3, 1 / 3, 1 / 3)], ids=["bleu2", "bleu4", "bleu1", "bleu3"])
def test_corpus_bleu_equals_nltk_with_smoothing_method_1(case, weights):
    refs, hyps = tokens(case)
    expected = nltk_corpus_bleu(refs, hyps, weights=weights, smoothing_function=SmoothingFunction().method1)
    assert corpus_bleu(refs, hyps, weights) == pytest.approx(float(expected), rel=1e-12, abs=1e-15)


def test_bleu2_by_hand():
    # hyp 亲在的 vs ref 亲在的呢: unigrams 3/3, bigrams 2/2; length 3 vs 4: BP = exp(1 - 4/3).
    assert corpus_bleu([[list("亲在的呢")]], [list("亲在的")], BLEU2) == pytest.approx(math.exp(1 - 4 / 3))
    # hyp 气天今 vs 今天天气: unigrams 3/3, bigrams 0/2 -> smoothed 0.1/2; BP exp(1 - 4/3).
    assert corpus_bleu([[list("今天天气")]], [list("气天今")], BLEU2) == pytest.approx(
        math.exp(1 - 4 / 3) * math.sqrt(1.0 * 0.05))
    # Corpus level: counts are summed before dividing. Hyps 好 / 好的呀 vs refs 好的 / 好的:
    # unigrams (1 + 2) / (1 + 3), bigrams (0 + 1) / (1 + 2) (a 1-token hyp still counts 1);
    # lengths c = 1 + 3 = r = 2 + 2, so BP = exp(1 - r/c) = 1.
    value = corpus_bleu([[list("好的")], [list("好的")]], [list("好"), list("好的呀")], BLEU2)
    assert value == pytest.approx(math.sqrt(3 / 4 * 1 / 3))
    assert corpus_bleu([[list("不客气")]], [list("谢谢")], BLEU4) == 0.0


def test_bleu_input_errors():
    with pytest.raises(ValueError, match="2 hypotheses but 1 reference"):
        corpus_bleu([[["a"]]], [["a"], ["b"]])
    with pytest.raises(ValueError, match="at least one reference"):
        corpus_bleu([[]], [["a"]])


def test_distinct_by_hand():
    outs = [list("好的好的"), list("好的亲")]
    # unigrams: 好 的 好 的 好 的 亲 -> 3 distinct of 7; bigrams: 好的 的好 好的 | 好的 的亲 -> 3 of 5.
    assert distinct_n(outs, 1) == pytest.approx(3 / 7)
    assert distinct_n(outs, 2) == pytest.approx(3 / 5)
    assert distinct_n([list("好")], 2) == 0.0 and distinct_n([], 1) == 0.0


def test_recall_at_k_breaks_ties_at_random():
    scores = [[5.0, 1.0, 2.0], [1.0, 3.0, 2.0], [2.0, 2.0, 2.0], [4.0, 4.0, 1.0]]
    positives = [0, 0, 1, 0]
    # ranks: 1st; 3rd; tied with 2 others -> uniform over 1..3; tied with 1 other -> 1 or 2.
    assert recall_at_k(scores, positives, 1) == pytest.approx((1 + 0 + 1 / 3 + 1 / 2) / 4)
    assert recall_at_k(scores, positives, 2) == pytest.approx((1 + 0 + 2 / 3 + 1) / 4)
    assert recall_at_k(scores, positives, 3) == pytest.approx(1.0)
    # Constant scores give exactly the chance level.
    assert recall_at_k([[0.0] * 10] * 7, [3] * 7, 1) == pytest.approx(0.1)
