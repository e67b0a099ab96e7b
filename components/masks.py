"""Attention masks. Every mask is boolean with True = "query may attend to key".

- `bidirectional`: every position sees every non-padded position (MLM, classification, retrieval).
- `unilm`: from segment ids s, position i sees j iff cumsum(s)[j] <= cumsum(s)[i] (Dong et al., 2019):
  segment 0 (source) sees the source; segment 1 (target) sees the source and earlier target tokens.
- `causal`: position i sees j <= i (dialogue LM).
Each is combined with key padding from the attention mask.
"""

from __future__ import annotations

import torch

MASK_MODES = ("bidirectional", "unilm", "causal")


def check_mask_mode(mask_mode: str) -> None:
    if mask_mode not in MASK_MODES:
        raise ValueError(f"unknown mask_mode {mask_mode!r}; valid: {', '.join(MASK_MODES)}")


def unilm_visibility(segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) segment ids -> (B, T, T) bool, [b, i, j] = cumsum(s)[b, j] <= cumsum(s)[b, i]."""
    c = torch.cumsum(segment_ids.long(), dim=1)
    return c[:, None, :] <= c[:, :, None]


def causal_visibility(T: int, device=None) -> torch.Tensor:
    """(T, T) bool lower triangle."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def build_mask(mask_mode: str, attention_mask: torch.Tensor, segment_ids: torch.Tensor | None = None
               ) -> torch.Tensor:
    """attention_mask: (B, T) 1 for tokens, 0 for padding. Returns (B, 1, T, T) bool."""
    check_mask_mode(mask_mode)
    B, T = attention_mask.shape
    keys = attention_mask.bool()[:, None, :]                                 # (B, 1, T)
    if mask_mode == "bidirectional":
        allowed = keys.expand(B, T, T)
    elif mask_mode == "causal":
        allowed = causal_visibility(T, attention_mask.device)[None] & keys
    else:
        if segment_ids is None:
            raise ValueError("mask_mode 'unilm' needs segment_ids (0 = source, 1 = target)")
        allowed = unilm_visibility(segment_ids) & keys
    # A padded query row would otherwise see nothing; let it see itself so softmax stays finite.
    allowed = allowed | torch.eye(T, dtype=torch.bool, device=attention_mask.device)[None]
    return allowed[:, None]


def incremental_mask(past_valid: torch.Tensor, new_valid: torch.Tensor) -> torch.Tensor:
    """Mask for T_new tokens appended after a cache: they see every valid cached key and the new
    tokens causally. past_valid: (B, P) bool, new_valid: (B, T) bool -> (B, 1, T, P + T)."""
    B, T = new_valid.shape
    past = past_valid[:, None, :].expand(B, T, past_valid.shape[1])
    new = causal_visibility(T, new_valid.device)[None] & new_valid[:, None, :]
    new = new | torch.eye(T, dtype=torch.bool, device=new_valid.device)[None]
    return torch.cat([past, new], dim=2)[:, None]
