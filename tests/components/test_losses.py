"""SimBERT's two losses and CoSENT against explicit per-element computations."""

import math

import pytest
import torch

from components.losses import cosent_loss, in_batch_contrastive_loss, partner_index, seq2seq_loss


def test_seq2seq_loss_counts_only_target_tokens():
    torch.manual_seed(0)
    V = 11
    ids = torch.tensor([[2, 5, 6, 3, 7, 8, 3, 0], [2, 9, 3, 4, 3, 0, 0, 0]])
    seg = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 0, 0, 0]])
    am = (ids != 0).long()
    logits = torch.randn(2, 8, V)
    expected, count = 0.0, 0
    for b in range(2):
        for t in range(7):
            if seg[b, t + 1] == 1 and am[b, t + 1] == 1:       # predicts a target token (incl. final [SEP])
                expected += -torch.log_softmax(logits[b, t], -1)[ids[b, t + 1]].item()
                count += 1
    assert count == 5
    assert seq2seq_loss(logits, ids, seg, am).item() == pytest.approx(expected / count, rel=1e-6)
    with pytest.raises(ValueError, match="no target tokens"):
        seq2seq_loss(logits, ids, torch.zeros_like(seg), am)


def test_contrastive_loss_matches_explicit_softmax():
    torch.manual_seed(1)
    v = torch.randn(6, 4)
    assert partner_index(6).tolist() == [1, 0, 3, 2, 5, 4]
    n = torch.nn.functional.normalize(v, dim=-1)
    total = 0.0
    for i in range(6):
        logits = [30 * float(n[i] @ n[j]) for j in range(6) if j != i]
        partner = [j for j in range(6) if j != i].index(i + 1 - 2 * (i % 2))
        total += -(logits[partner] - math.log(sum(math.exp(x) for x in logits)))
    assert in_batch_contrastive_loss(v).item() == pytest.approx(total / 6, rel=1e-5)
    with pytest.raises(ValueError, match="even batch size"):
        in_batch_contrastive_loss(v[:5])


def test_cosent_loss_matches_the_explicit_sum_over_ordered_pairs():
    cos = torch.tensor([0.9, 0.2, 0.5, 0.5, -0.1])
    scores = torch.tensor([5.0, 1.0, 3.0, 3.0, 1.0])        # ties (3, 3) and (1, 1) are not compared
    terms = [math.exp(20 * (float(cos[j]) - float(cos[i])))
             for i in range(5) for j in range(5) if scores[i] > scores[j]]
    assert len(terms) == 8
    assert cosent_loss(cos, scores).item() == pytest.approx(math.log(1 + sum(terms)), rel=1e-5)
    # Cosines in the gold order score lower than the same cosines reversed.
    ranked = torch.tensor([0.9, 0.1, 0.5, 0.5, 0.1])
    assert cosent_loss(ranked, scores) < cosent_loss(-ranked, scores)
    assert cosent_loss(cos, torch.full((5,), 2.0)).item() == 0.0
    with pytest.raises(ValueError, match=r"\(B,\) tensors"):
        cosent_loss(cos, scores[:4])
