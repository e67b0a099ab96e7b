"""The tensor operations behind the logits processors (processors.py): repetition controls, top-k
and nucleus masks, and their consistent variants that never remove EOS.

Ties: candidates are ordered by descending logit with a *stable* sort, so among equal logits the
lower token id ranks first. top-k keeps exactly k tokens in that order; nucleus keeps the shortest
prefix of that order whose probability mass reaches p, the crossing token included.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


def top_k_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    """(N, V) -> bool (N, V): True for the k best tokens of each row (ties by lower id).

    Same set as the first k of a stable descending sort, without sorting the vocabulary: every
    token above the k-th largest value, then the lowest ids among those equal to it."""
    k = min(k, logits.shape[-1])
    kth = logits.topk(k, dim=-1).values[:, -1:]                 # (N, 1) the k-th largest value
    keep = logits >= kth
    if bool((keep.sum(dim=-1) == k).all()):                     # the usual case: no tie at the cut
        return keep
    above = logits > kth
    tied = keep & ~above
    room = k - above.sum(dim=-1, keepdim=True)                  # how many tied tokens fit
    return above | (tied & (tied.cumsum(dim=-1) <= room))


def top_p_mask(logits: torch.Tensor, p: float) -> torch.Tensor:
    """(N, V) -> bool (N, V): the nucleus — tokens whose preceding cumulative mass is < p."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    probs = sorted_logits.float().softmax(-1)
    before = probs.cumsum(-1) - probs                      # mass of strictly better-ranked tokens
    keep_sorted = before < p
    keep_sorted[:, 0] = True                               # the best token is always kept
    keep = torch.zeros_like(logits, dtype=torch.bool)
    return keep.scatter_(-1, order, keep_sorted)


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None, eos_id: int | None = None,
                  consistent: bool = False) -> torch.Tensor:
    """Set filtered tokens to -inf: top-k, then the nucleus of what top-k kept (the order of the
    processor chain and of transformers). Returns `logits` itself when nothing is filtered. With
    `consistent`, EOS keeps its logit whatever the filters say."""
    if consistent and eos_id is None:
        raise ValueError("consistent decoding needs the EOS token id")
    keep_id = eos_id if consistent else None
    out = logits
    if top_k is not None:
        out = apply_mask(out, top_k_mask(out, top_k), keep_id)
    if top_p is not None and top_p < 1.0:
        out = apply_mask(out, top_p_mask(out, top_p), keep_id)
    return out


def apply_mask(scores: torch.Tensor, keep: torch.Tensor, keep_id: int | None = None) -> torch.Tensor:
    """-inf where `keep` is False; token `keep_id` (EOS, for consistent decoding) is always kept."""
    if keep_id is not None:
        keep[:, keep_id] = True
    return torch.where(keep, scores, NEG_INF)


def apply_repetition_penalty(logits: torch.Tensor, generated: torch.Tensor, penalty: float) -> torch.Tensor:
    """generated: (N, t) token ids (pad with -1). Tokens already generated get logit / penalty when
    positive and logit × penalty otherwise."""
    if penalty == 1.0 or generated.shape[1] == 0:
        return logits
    N, V = logits.shape
    ids = generated.masked_fill(generated < 0, V)        # padding -> an extra column, dropped below
    seen = torch.zeros(N, V + 1, dtype=torch.bool, device=logits.device).scatter_(1, ids, True)[:, :V]
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def ban_repeated_ngrams(logits: torch.Tensor, generated: list[list[int]], n: int) -> torch.Tensor:
    """Forbid tokens that would complete an n-gram already present in the row's generated tokens."""
    if n <= 0:
        return logits
    logits = logits.clone()
    for row, seq in enumerate(generated):
        if len(seq) < n - 1 or (n > 1 and len(seq) < n):
            continue
        prefix = tuple(seq[len(seq) - n + 1:]) if n > 1 else ()
        banned = [seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i:i + n - 1]) == prefix]
        if banned:
            logits[row, banned] = NEG_INF
    return logits
