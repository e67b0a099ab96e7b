"""Evaluation against gold structures.

- Segmentation (SIGHAN bakeoff convention): each word is the character span it covers; precision
  = correct spans / predicted spans, recall = correct spans / gold spans, F1 their harmonic mean,
  all micro-averaged over the corpus (the counts are summed before dividing). With the training
  word list, as the bakeoff's `score` reports them: OOV rate = gold words not in the list / gold
  words, OOV recall = correct OOV gold words / OOV gold words, IV recall the same for the others
  (`score` matches words through a diff alignment; over character spans the counts are the same
  unless diff pairs a repeated word with another of its occurrences).
- Dependencies: UAS = share of words whose predicted head is the gold head (heads 1-based, 0 =
  root). UUAS = share of the gold tree's undirected word-word edges (the root attachment left
  out) that the predicted tree also has (Hewitt & Manning, 2019). Both micro-averaged.
- Constituency: unlabeled bracket F1 over the spans of two or more words, duplicates removed; by
  default the whole-sentence span is left out too (it is always right). Reported as the mean of
  sentence F1s (as unsupervised-parsing papers do) and as corpus (micro) F1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class PRF:
    precision: float
    recall: float
    f1: float
    correct: int
    predicted: int
    gold: int

    def to_dict(self) -> dict:
        return asdict(self)


def prf(correct: int, predicted: int, gold: int) -> PRF:
    p = correct / predicted if predicted else 0.0
    r = correct / gold if gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return PRF(p, r, f, correct, predicted, gold)


def word_spans(words: list[str]) -> set[tuple[int, int]]:
    """Character spans [start, end) of the words of one sentence."""
    spans, start = set(), 0
    for w in words:
        spans.add((start, start + len(w)))
        start += len(w)
    return spans


def segmentation_counts(pred: list[str], gold: list[str]) -> tuple[int, int, int]:
    """(correct, predicted, gold) word counts of one sentence; the two must spell the same text."""
    if "".join(pred) != "".join(gold):
        raise ValueError(f"prediction and gold differ in text: {''.join(pred)!r} vs {''.join(gold)!r}")
    return len(word_spans(pred) & word_spans(gold)), len(pred), len(gold)


def segmentation_prf(pred_sents: list[list[str]], gold_sents: list[list[str]]) -> PRF:
    if len(pred_sents) != len(gold_sents):
        raise ValueError(f"{len(pred_sents)} predicted sentences but {len(gold_sents)} gold ones")
    c = p = g = 0
    for pred, gold in zip(pred_sents, gold_sents):
        a, b, d = segmentation_counts(pred, gold)
        c, p, g = c + a, p + b, g + d
    return prf(c, p, g)


def segmentation_scores(pred_sents: list[list[str]], gold_sents: list[list[str]],
                        train_words: set[str] | None = None) -> dict[str, float]:
    """Precision, recall, F1 and their counts; with `train_words` also oov_rate, oov_recall and
    iv_recall (gold words in the list are in-vocabulary)."""
    if len(pred_sents) != len(gold_sents):
        raise ValueError(f"{len(pred_sents)} predicted sentences but {len(gold_sents)} gold ones")
    c = p = g = oov = oov_ok = 0
    for pred, gold in zip(pred_sents, gold_sents):
        if "".join(pred) != "".join(gold):
            raise ValueError(f"prediction and gold differ in text: {''.join(pred)!r} vs {''.join(gold)!r}")
        hit = word_spans(pred)
        start = 0
        for w in gold:
            span = (start, start + len(w))
            start += len(w)
            ok = span in hit
            c += ok
            if train_words is not None and w not in train_words:
                oov += 1
                oov_ok += ok
        p, g = p + len(pred), g + len(gold)
    out = prf(c, p, g).to_dict()
    if train_words is not None:
        iv = g - oov
        out.update({"oov_rate": oov / g if g else 0.0, "oov_recall": oov_ok / oov if oov else 0.0,
                    "iv_recall": (c - oov_ok) / iv if iv else 0.0, "oov_words": oov})
    return out


def _undirected(heads: list[int]) -> set[tuple[int, int]]:
    return {(min(m, h), max(m, h)) for m, h in enumerate(heads, 1) if h != 0}


def attachment_counts(pred_heads: list[int], gold_heads: list[int],
                      keep: list[bool] | None = None) -> tuple[int, int, int, int]:
    """(correct heads, words, correct undirected edges, gold edges) of one sentence. `keep` marks the
    words to score (e.g. not punctuation); edges count when their dependent is kept."""
    if len(pred_heads) != len(gold_heads):
        raise ValueError(f"{len(pred_heads)} predicted heads but {len(gold_heads)} gold heads")
    n = len(gold_heads)
    keep = keep if keep is not None else [True] * n
    correct = sum(1 for m in range(n) if keep[m] and pred_heads[m] == gold_heads[m])
    words = sum(keep)
    pred_edges = _undirected(pred_heads)
    gold_edges = {(min(m, h), max(m, h)) for m, h in enumerate(gold_heads, 1) if h != 0 and keep[m - 1]}
    return correct, words, len(gold_edges & pred_edges), len(gold_edges)


def attachment_scores(pred: list[list[int]], gold: list[list[int]],
                      keep: list[list[bool]] | None = None) -> dict[str, float]:
    if len(pred) != len(gold):
        raise ValueError(f"{len(pred)} predicted trees but {len(gold)} gold trees")
    totals = [0, 0, 0, 0]
    for k, (p, g) in enumerate(zip(pred, gold)):
        counts = attachment_counts(p, g, keep[k] if keep is not None else None)
        totals = [a + b for a, b in zip(totals, counts)]
    c, w, ce, ge = totals
    return {"uas": c / w if w else 0.0, "uuas": ce / ge if ge else 0.0, "words": w, "edges": ge}


def bracket_counts(pred: set[tuple[int, int]], gold: set[tuple[int, int]], n: int,
                   drop_whole: bool = True) -> tuple[int, int, int]:
    """(correct, predicted, gold) spans of one sentence of n words: spans of length >= 2 only, and
    without (0, n) when drop_whole."""
    def clean(spans):
        return {(a, b) for a, b in spans if b - a >= 2 and not (drop_whole and (a, b) == (0, n))}
    p, g = clean(pred), clean(gold)
    return len(p & g), len(p), len(g)


def bracket_f1(pred: list[set[tuple[int, int]]], gold: list[set[tuple[int, int]]], lengths: list[int],
               drop_whole: bool = True) -> dict[str, float]:
    """Sentence-averaged and corpus (micro) unlabeled bracket F1. A sentence with no spans to score
    on either side (e.g. two words with drop_whole) is left out of the sentence average."""
    if not (len(pred) == len(gold) == len(lengths)):
        raise ValueError("pred, gold and lengths must have one entry per sentence")
    f1s, totals = [], [0, 0, 0]
    for p, g, n in zip(pred, gold, lengths):
        c, np_, ng = bracket_counts(p, g, n, drop_whole)
        totals = [totals[0] + c, totals[1] + np_, totals[2] + ng]
        if np_ or ng:
            f1s.append(prf(c, np_, ng).f1)
    corpus = prf(*totals)
    return {"sentence_f1": sum(f1s) / len(f1s) if f1s else 0.0, "corpus_f1": corpus.f1,
            "precision": corpus.precision, "recall": corpus.recall, "sentences": len(f1s)}
