"""Linear attention: every form equals the explicit O(n²) formula (long sequences on the blockwise
paths too, forward and backward); masks follow their definitions."""

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


# --- long sequences: the blockwise paths (T > LINEAR_DENSE_MAX) against the dense formula --------------
def dense_reference(q, k, v, valid, causal, state=None, rows=512):
    """The explicit O(n²) formula in float64, a block of query rows at a time (each row only needs
    every key, so row blocks bound memory without changing the formula). Differentiable; with a
    causal `state` (S0, z0) the earlier positions' sums add to every row, and the final sums are
    returned as well."""
    T = q.shape[2]
    phi_q, phi_k, vd = feature_map(q).double(), feature_map(k).double(), v.double()
    phi_k = phi_k * valid[:, None, :, None].double()
    outs = []
    for a in range(0, T, rows):
        b = min(a + rows, T)
        A = phi_q[:, :, a:b] @ phi_k.transpose(-1, -2)                              # (B, H, rows, T)
        if causal:
            A = A * torch.ones(b - a, T, dtype=torch.bool).tril(a)
        num, den = A @ vd, A.sum(-1, keepdim=True)
        if state is not None:
            num = num + phi_q[:, :, a:b] @ state[0].double()
            den = den + phi_q[:, :, a:b] @ state[1].double()[..., None]
        outs.append(num / (den + LINEAR_EPS))
    out = torch.cat(outs, dim=2)
    if not causal:
        return out
    S = phi_k.transpose(-1, -2) @ vd + (0 if state is None else state[0].double())
    z = phi_k.sum(2) + (0 if state is None else state[1].double())
    return out, S, z


def _grads(outputs, cotangents, inputs):
    loss = sum((o.double() * c.double()).sum() for o, c in zip(outputs, cotangents))
    return torch.autograd.grad(loss, inputs)


def _close(a, b, rtol=1e-5):
    """Float32 kernels against a float64 reference: error relative to the tensor's scale."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max()) <= rtol * float(b.abs().max())


@pytest.fixture
def count_blockwise(monkeypatch):
    """How often each blockwise autograd Function ran (so the test cannot pass on the dense path)."""
    import components.attention as attention
    calls = {"linear": 0, "causal": 0}

    class Counted:
        def __init__(self, fn, key):
            self.fn, self.key = fn, key

        def apply(self, *args):
            calls[self.key] += 1
            return self.fn.apply(*args)

    monkeypatch.setattr(attention, "_BlockwiseLinear", Counted(attention._BlockwiseLinear, "linear"))
    monkeypatch.setattr(attention, "_BlockwiseCausal", Counted(attention._BlockwiseCausal, "causal"))
    return calls


def _long_inputs(T, state=False, seed=0):
    B, H, d, m = 2, 2, 4, 3
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, n, generator=g) for n in (d, d, m))
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, T - 37:] = False                                        # a padded second row
    S0 = (torch.rand(B, H, d, m, generator=g), torch.rand(B, H, d, generator=g)) if state else None
    return q, k, v, valid, S0, g


@pytest.mark.parametrize("T", [1100, 4100])
def test_blockwise_linear_forward_and_backward_equal_the_dense_formula(T, count_blockwise):
    from components.attention import LINEAR_DENSE_MAX
    assert T > LINEAR_DENSE_MAX
    q, k, v, valid, _, g = _long_inputs(T)
    with torch.no_grad():
        assert _close(linear_attention(q, k, v, valid), dense_reference(q, k, v, valid, causal=False))
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = linear_attention(*leaves, valid)
    ref = dense_reference(*leaves, valid, causal=False)
    assert _close(out, ref)
    cot = torch.randn(out.shape, generator=g)
    for got, want in zip(_grads([out], [cot], leaves), _grads([ref], [cot], leaves)):
        assert _close(got, want)
    assert count_blockwise["linear"] == 2


@pytest.mark.parametrize("T", [1100, 4100])
@pytest.mark.parametrize("with_state", [False, True])
def test_blockwise_causal_forward_and_backward_equal_the_dense_formula(T, with_state, count_blockwise):
    q, k, v, valid, state, g = _long_inputs(T, state=with_state, seed=1)
    with torch.no_grad():                                            # the sequential no-grad form
        out, (S, z) = causal_linear_attention(q, k, v, valid, state=state)
        ref, S_ref, z_ref = dense_reference(q, k, v, valid, causal=True, state=state)
        assert _close(out, ref) and _close(S, S_ref) and _close(z, z_ref)
    assert count_blockwise["causal"] == 0
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, *(state or ()))]
    kw = {"state": (leaves[3], leaves[4])} if with_state else {}
    out, (S, z) = causal_linear_attention(*leaves[:3], valid, **kw)
    assert count_blockwise["causal"] == 1
    ref = dense_reference(*leaves[:3], valid, causal=True, **kw)
    for got, want in zip((out, S, z), ref):
        assert _close(got, want)
    cots = [torch.randn(t.shape, generator=g) for t in ref]
    for got, want in zip(_grads((out, S, z), cots, leaves), _grads(ref, cots, leaves)):
        assert _close(got, want)
