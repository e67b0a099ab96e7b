"""Losses shared by the training tasks.

- `seq2seq_loss`: UniLM sequence-to-sequence cross-entropy. Position t predicts token t+1; only
  target tokens count (segment 1, including the final [SEP]), never the source or padding.
- `in_batch_contrastive_loss`: SimBERT's retrieval objective. Rows come in adjacent pairs
  (a, b), (b, a); each row's partner is its positive and every other row a negative. Cosine
  similarities of the L2-normalised vectors are scaled (default 30), the diagonal is masked.
- `cosent_loss`: CoSENT's ranking objective on graded pairs (STS-B scores): every two pairs whose
  gold scores differ should keep that order in their cosines,
  log(1 + sum over s_i > s_j of exp(scale * (cos_j - cos_i))).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def seq2seq_loss(logits: torch.Tensor, input_ids: torch.Tensor, segment_ids: torch.Tensor,
                 attention_mask: torch.Tensor) -> torch.Tensor:
    """logits: (B, T, V); the others (B, T). Mean cross-entropy over target tokens."""
    targets = input_ids[:, 1:]                                               # (B, T-1)
    counted = (segment_ids[:, 1:] == 1) & attention_mask[:, 1:].bool()       # (B, T-1)
    if not bool(counted.any()):
        raise ValueError("seq2seq_loss: the batch has no target tokens (segment id 1)")
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), targets, reduction="none")
    return (nll * counted).sum() / counted.sum()


def partner_index(batch_size: int, device=None) -> torch.Tensor:
    """[1, 0, 3, 2, ...]: the positive of each row when rows come in adjacent pairs."""
    if batch_size % 2:
        raise ValueError(f"in-batch pairs need an even batch size, got {batch_size}")
    idx = torch.arange(batch_size, device=device)
    return idx + 1 - 2 * (idx % 2)


def in_batch_contrastive_loss(vectors: torch.Tensor, scale: float = 30.0) -> torch.Tensor:
    """vectors: (B, H) with rows paired (0,1), (2,3), ... Returns the mean cross-entropy of each row
    against its partner among all other rows."""
    v = F.normalize(vectors.float(), dim=-1)
    sim = v @ v.T * scale                                                    # (B, B)
    sim = sim.masked_fill(torch.eye(len(v), dtype=torch.bool, device=v.device), float("-inf"))
    return F.cross_entropy(sim, partner_index(len(v), v.device))


def cosent_loss(cosines: torch.Tensor, scores: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """cosines, scores: (B,) for B sentence pairs. Pairs with equal scores are not compared; a
    batch whose scores are all equal gives log(1) = 0 (and a zero gradient)."""
    if cosines.shape != scores.shape or cosines.dim() != 1:
        raise ValueError(f"cosent_loss needs two (B,) tensors, got {tuple(cosines.shape)} and {tuple(scores.shape)}")
    c = cosines.float() * scale
    diff = c[None, :] - c[:, None]                                # [i, j] = scale * (cos_j - cos_i)
    ordered = scores[:, None] > scores[None, :]                   # i should be the more similar
    diff = diff.masked_fill(~ordered, float("-inf"))
    return torch.logsumexp(torch.cat([c.new_zeros(1), diff.flatten()]), dim=0)
