"""Linear attention: every form equals the explicit O(n²) formula; masks follow their definitions."""

import pytest
import torch

from components.attention import (
    LINEAR_EPS,
    causal_linear_attention,
    feature_map,
    linear_attention,
    recurrent_linear_attention,
)
from components.masks import build_mask, incremental_mask, unilm_visibility


def explicit_linear(q, k, v, allowed):
    """out_i = Σ_j A_ij v_j / (Σ_j A_ij + eps) with A_ij = φ(q_i)·φ(k_j) on allowed pairs: O(n²)."""
    A = torch.einsum("bhtd,bhsd->bhts", feature_map(q).double(), feature_map(k).double())
    A = A * allowed.double()
    return (A @ v.double()) / (A.sum(-1, keepdim=True) + LINEAR_EPS)


def _qkv(B=2, H=3, T=37, d=8, m=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, d, generator=g), torch.randn(B, H, T, d, generator=g),
            torch.randn(B, H, T, m, generator=g))


def _padding(B, T):
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, T - 9:] = False
    return valid


def test_parallel_form_equals_explicit_formula_with_padding():
    q, k, v = _qkv()
    valid = _padding(2, q.shape[2])
    allowed = valid[:, None, None, :].expand(-1, 1, q.shape[2], -1)
    out = linear_attention(q, k, v, valid)
    ref = explicit_linear(q, k, v, allowed)
    assert torch.allclose(out.double()[valid[:, None, :, None].expand_as(out)],
                          ref[valid[:, None, :, None].expand_as(ref)], atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_causal_chunked_equals_explicit_and_recurrent(chunk):
    q, k, v = _qkv(T=41)
    B, H, T, _ = q.shape
    valid = _padding(B, T)
    tri = torch.ones(T, T, dtype=torch.bool).tril()
    allowed = (tri[None] & valid[:, None, :])[:, None]
    out, (S, z) = causal_linear_attention(q, k, v, valid, chunk=chunk)
    ref = explicit_linear(q, k, v, allowed)
    rows = valid[:, None, :, None].expand_as(out)
    assert torch.allclose(out.double()[rows], ref[rows], atol=1e-5)
    # Recurrent form, one position at a time.
    state = (torch.zeros(B, H, q.shape[-1], v.shape[-1]), torch.zeros(B, H, q.shape[-1]))
    steps = []
    for t in range(T):
        y, state = recurrent_linear_attention(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], state,
                                              valid[:, t:t + 1])
        steps.append(y)
    rec = torch.cat(steps, dim=2)
    assert torch.allclose(rec[rows], out[rows], atol=1e-5)
    assert torch.allclose(state[0], S, atol=1e-4) and torch.allclose(state[1], z, atol=1e-4)


def test_causal_state_continues_across_calls():
    q, k, v = _qkv(T=30)
    full, _ = causal_linear_attention(q, k, v)
    first, state = causal_linear_attention(q[:, :, :13], k[:, :, :13], v[:, :, :13], chunk=4)
    second, _ = causal_linear_attention(q[:, :, 13:], k[:, :, 13:], v[:, :, 13:], state=state, chunk=7)
    assert torch.allclose(torch.cat([first, second], dim=2), full, atol=1e-5)


def test_unilm_mask_follows_cumsum_rule():
    seg = torch.tensor([[0, 0, 0, 1, 1, 1, 0]])   # last position is padding
    vis = unilm_visibility(seg)[0]
    c = seg.cumsum(1)[0]
    for i in range(7):
        for j in range(7):
            assert bool(vis[i, j]) == bool(c[j] <= c[i])
    mask = build_mask("unilm", torch.tensor([[1, 1, 1, 1, 1, 1, 0]]), seg)[0, 0]
    assert mask[0, :3].all() and not mask[0, 3:].any()          # source sees only the source
    assert mask[4, :5].all() and not mask[4, 5:].any()          # target sees source + earlier target
    assert not mask[:6, 6].any()                                # nobody attends to padding


def test_causal_and_bidirectional_masks():
    am = torch.tensor([[1, 1, 1, 0]])
    causal = build_mask("causal", am)[0, 0]
    assert torch.equal(causal[:3, :3], torch.ones(3, 3, dtype=torch.bool).tril())
    assert not causal[:3, 3].any()
    bi = build_mask("bidirectional", am)[0, 0]
    assert bi[:3, :3].all() and not bi[:3, 3].any()
    with pytest.raises(ValueError, match="valid: bidirectional, unilm, causal"):
        build_mask("diagonal", am)
    inc = incremental_mask(torch.tensor([[True, False, True]]), torch.tensor([[True, True]]))[0, 0]
    assert inc.tolist() == [[True, False, True, True, False], [True, False, True, True, True]]
