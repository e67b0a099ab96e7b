"""Attention kernels: softmax (PyTorch SDPA) and linear attention in three exact forms.

Linear attention (Katharopoulos et al., 2020) replaces softmax(q·k) with φ(q)·φ(k), φ(x) = elu(x) + 1:

    out_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ  /  (φ(q_i)ᵀ Σ_j φ(k_j) + eps)

Scaling convention: φ is applied to the raw projections, with no 1/sqrt(d) factor (as in
fast-transformers); eps = 1e-6 guards the normaliser. Sums are accumulated in float32.

Three forms with identical outputs:
- `linear_attention`        non-causal, O(n): key padding zeroes rows of φ(K).
- `causal_linear_attention` causal, chunked: within a chunk an explicit C×C product, across chunks
                            running sums, so no n×n matrix exists. Takes and returns the running
                            state (S, z) so decoding can continue it.
- `recurrent_linear_attention` one new position given the running state (S, z).

Memory: without autograd the causal chunks run one after the other, the running sums updated in
place. Sequences longer than LINEAR_DENSE_MAX positions run block by block (non-causal always,
causal with autograd), the running sums carried from block to block and each block recomputed in
backward. Either way peak memory for long sequences is the output (in backward also the gradients)
plus one chunk's or block's intermediates, whatever n.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LINEAR_EPS = 1e-6
DEFAULT_CHUNK = 64
LINEAR_DENSE_MAX = 1024  # longer sequences run block by block (_BlockwiseLinear, _BlockwiseCausal) ...
LINEAR_BLOCK = 128       # ... of this many positions


def feature_map(x: torch.Tensor) -> torch.Tensor:
    """φ(x) = elu(x) + 1, strictly positive; computed in float32."""
    return F.elu(x.float()).add_(1.0)          # in place on elu's fresh output (elu saves its input)


def softmax_attention(q, k, v, allowed: torch.Tensor | None, dropout_p: float = 0.0,
                      is_causal: bool = False) -> torch.Tensor:
    """q, k, v: (B, nh, T, hs) / (B, nh, S, hs); allowed: (B, 1, T, S) bool, True = may attend
    (None = everything, or the causal triangle when is_causal)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p,
                                          is_causal=is_causal and allowed is None)


def linear_state(k, v, key_valid: torch.Tensor | None = None):
    """Running sums (S, z) of a set of keys: S = Σ φ(k_j) v_jᵀ (B, nh, d, m), z = Σ φ(k_j) (B, nh, d)."""
    phi_k = feature_map(k)
    if key_valid is not None:
        phi_k = phi_k * key_valid[:, None, :, None].to(phi_k.dtype)
    return phi_k.transpose(-1, -2) @ v.float(), phi_k.sum(dim=2)


def _read_state(q, S, z) -> torch.Tensor:
    """Queries against running sums: φ(q) S / (φ(q)·z + eps). q: (B, nh, T, d) -> (B, nh, T, m)."""
    phi_q = feature_map(q)
    num = phi_q @ S                                                      # (B, nh, T, m)
    den = phi_q @ z[..., None] + LINEAR_EPS                              # (B, nh, T, 1)
    return (num / den if torch.is_grad_enabled() else num.div_(den)).to(q.dtype)


def _dense_linear(q, k, v, key_valid):
    return _read_state(q, *linear_state(k, v, key_valid))


def linear_attention(q, k, v, key_valid: torch.Tensor | None = None, block: int | None = None) -> torch.Tensor:
    """Non-causal linear attention. q: (B, nh, T, d), k: (B, nh, S, d), v: (B, nh, S, m);
    key_valid: (B, S) bool. Returns (B, nh, T, m) in q's dtype.

    Sequences longer than LINEAR_DENSE_MAX run in blocks of `block` (default LINEAR_BLOCK)
    positions (`_BlockwiseLinear`)."""
    if max(q.shape[2], k.shape[2]) <= LINEAR_DENSE_MAX:
        return _dense_linear(q, k, v, key_valid)
    return _BlockwiseLinear.apply(q, k, v, key_valid, block or LINEAR_BLOCK)


def _dense_causal(q, k, v, key_valid, state, chunk):
    """The chunked causal form over a whole (short) sequence; autograd-native."""
    B, H, T, d = q.shape
    m = v.shape[-1]
    phi_q, phi_k, vf = feature_map(q), feature_map(k), v.float()
    if key_valid is not None:
        phi_k = phi_k * key_valid[:, None, :, None].to(phi_k.dtype)
    if state is None:
        S0 = phi_q.new_zeros(B, H, d, m)
        z0 = phi_q.new_zeros(B, H, d)
    else:
        S0, z0 = state[0].float(), state[1].float()
    C = max(1, min(chunk, T))
    pad = (-T) % C
    if pad:  # zero rows of φ(K) and V add nothing to any sum
        phi_q = F.pad(phi_q, (0, 0, 0, pad))
        phi_k = F.pad(phi_k, (0, 0, 0, pad))
        vf = F.pad(vf, (0, 0, 0, pad))
    n = (T + pad) // C
    Qc = phi_q.view(B, H, n, C, d)
    Kc = phi_k.view(B, H, n, C, d)
    Vc = vf.view(B, H, n, C, m)
    chunk_kv = Kc.transpose(-1, -2) @ Vc                                 # (B, nh, n, d, m)
    chunk_z = Kc.sum(dim=3)                                              # (B, nh, n, d)
    # Exclusive prefix sums over chunks (shifted cumsum, no subtraction), plus the carried state.
    S_incl = torch.cumsum(chunk_kv, dim=2) + S0[:, :, None]
    z_incl = torch.cumsum(chunk_z, dim=2) + z0[:, :, None]
    S_prev = torch.cat([S0[:, :, None], S_incl[:, :, :-1]], dim=2)
    z_prev = torch.cat([z0[:, :, None], z_incl[:, :, :-1]], dim=2)
    inter_num = Qc @ S_prev                                              # (B, nh, n, C, m)
    inter_den = (Qc @ z_prev[..., None]).squeeze(-1)                     # (B, nh, n, C)
    tri = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    A = (Qc @ Kc.transpose(-1, -2)) * tri                                # (B, nh, n, C, C)
    num = inter_num + A @ Vc
    den = inter_den + A.sum(dim=-1) + LINEAR_EPS
    out = (num / den[..., None]).reshape(B, H, n * C, m)[:, :, :T]
    return out.to(q.dtype), (S_incl[:, :, -1], z_incl[:, :, -1])


def _causal_sequential(q, k, v, key_valid, state, chunk, save_every: int | None = None):
    """The chunked causal form without autograd: chunk after chunk with the running sums updated
    in place, so that besides the output only one chunk's intermediates exist. With `save_every`,
    also returns the running sums at positions 0, save_every, 2·save_every, ... (for backward)."""
    B, H, T, d = q.shape
    m, BH = v.shape[-1], B * H
    if state is None:
        S = q.new_zeros(BH, d, m, dtype=torch.float32)
        z = q.new_zeros(BH, d, 1, dtype=torch.float32)
    else:
        S = state[0].float().reshape(BH, d, m).clone()
        z = state[1].float().reshape(BH, d, 1).clone()
    segment = save_every or max(T, 1)
    saved_S = S.new_empty(-(-T // segment), B, H, d, m) if save_every else None
    saved_z = S.new_empty(-(-T // segment), B, H, d) if save_every else None
    out = q.new_empty(B, H, T, m)
    C = max(1, chunk)
    tri = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    for i, seg in enumerate(range(0, T, segment)):
        if save_every:
            saved_S[i], saved_z[i] = S.view(B, H, d, m), z.view(B, H, d)
        for a in range(seg, min(seg + segment, T), C):
            b = min(a + C, seg + segment, T)
            c = b - a
            phi_q = feature_map(q[:, :, a:b]).reshape(BH, c, d)
            phi_k = feature_map(k[:, :, a:b])
            if key_valid is not None:
                phi_k.mul_(key_valid[:, None, a:b, None])
            phi_k = phi_k.reshape(BH, c, d)
            vf = v[:, :, a:b].float().reshape(BH, c, m)
            A = torch.bmm(phi_q, phi_k.transpose(1, 2)).mul_(tri[:c, :c])          # (BH, c, c)
            num = torch.bmm(phi_q, S).baddbmm_(A, vf)                              # (BH, c, m)
            den = torch.bmm(phi_q, z).add_(A.sum(-1, keepdim=True)).add_(LINEAR_EPS)
            out[:, :, a:b] = num.div_(den).view(B, H, c, m)
            S.baddbmm_(phi_k.transpose(1, 2), vf)
            z.add_(phi_k.sum(1).unsqueeze(-1))
    return out, (S.view(B, H, d, m), z.view(B, H, d)), (saved_S, saved_z)


def causal_linear_attention(q, k, v, key_valid: torch.Tensor | None = None, state=None,
                            chunk: int = DEFAULT_CHUNK, block: int | None = None):
    """Causal linear attention, chunked. q, k: (B, nh, T, d), v: (B, nh, T, m).

    key_valid: (B, T) bool (padded keys contribute nothing). state: optional (S, z) running sums of
    earlier positions, S: (B, nh, d, m), z: (B, nh, d). Returns (out (B, nh, T, m), (S, z)).
    Without autograd the chunks run one after the other (`_causal_sequential`); with autograd,
    sequences up to LINEAR_DENSE_MAX positions run all chunks at once (`_dense_causal`), longer
    ones in blocks of `block` (default LINEAR_BLOCK) positions (`_BlockwiseCausal`).
    """
    block = block or LINEAR_BLOCK
    S0, z0 = state if state is not None else (None, None)
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, S0, z0))):
        out, state, _ = _causal_sequential(q, k, v, key_valid, state, chunk)
        return out, state
    if q.shape[2] <= LINEAR_DENSE_MAX:
        return _dense_causal(q, k, v, key_valid, state, chunk)
    if state is None:
        B, H, _, d = q.shape
        S0 = q.new_zeros(B, H, d, v.shape[-1], dtype=torch.float32)
        z0 = q.new_zeros(B, H, d, dtype=torch.float32)
    out, S, z = _BlockwiseCausal.apply(q, k, v, key_valid, S0, z0, chunk, block)
    return out, (S, z)


def recurrent_linear_attention(q, k, v, state, key_valid: torch.Tensor | None = None):
    """One step. q, k: (B, nh, 1, d), v: (B, nh, 1, m); state (S, z) as above; key_valid: (B, 1)
    bool (a padded step leaves the state unchanged). Returns (out, new state)."""
    phi_q, phi_k = feature_map(q)[:, :, 0], feature_map(k)[:, :, 0]     # (B, nh, d)
    if key_valid is not None:
        phi_k = phi_k * key_valid[:, :1, None].to(phi_k.dtype)
    S = state[0] + torch.einsum("bhd,bhm->bhdm", phi_k, v[:, :, 0].float())
    z = state[1] + phi_k
    num = torch.einsum("bhd,bhdm->bhm", phi_q, S)
    den = torch.einsum("bhd,bhd->bh", phi_q, z)[..., None] + LINEAR_EPS
    return (num / den)[:, :, None].to(q.dtype), (S, z)


# --- long sequences: block by block -------------------------------------------------------------
# Sequences longer than LINEAR_DENSE_MAX are processed in blocks of LINEAR_BLOCK positions, with the
# running sums (S, z) carried from block to block, so that no intermediate is larger than one
# block's: peak memory is the output plus O(block) (plus the gradients in backward). Backward
# recomputes each block with autograd from its inputs and the running sums at its start, walking
# the blocks in reverse and carrying dS, dz. Causal: the forward pass keeps the sums every
# CHECKPOINT_BLOCKS blocks ((T / (CHECKPOINT_BLOCKS · block)) · d · m floats per head); backward
# recomputes the sums of the blocks in between. A differentiable backward (create_graph=True,
# e.g. a gradient penalty) falls back to differentiating the dense form.

CHECKPOINT_BLOCKS = 8


def _blocks(T: int, block: int):
    return [(a, min(a + block, T)) for a in range(0, T, block)]


def _rows(t: torch.Tensor | None, a: int, b: int) -> torch.Tensor | None:
    return None if t is None else t[:, a:b]


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_(True)


def _vjp(outputs, grads, inputs):
    """Vector-Jacobian product: the gradient of Σ <output, grad> w.r.t. inputs, for grads that are
    constants (no graph). Taken through a scalar because autograd, given explicit output gradients,
    imports torch.fx's symbolic shapes (sympy, ~30 MB) on first use."""
    return torch.autograd.grad(sum((o * g).sum() for o, g in zip(outputs, grads)), inputs)


def _differentiable_grads(ctx, inputs, outputs, grads):
    """Backward with create_graph=True: differentiate the dense form, keeping the graph (the output
    gradients may themselves depend on the inputs, so they go in as explicit grad_outputs)."""
    wanted = [i for i, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[i]]
    found = torch.autograd.grad(outputs, [inputs[i] for i in wanted], grads, create_graph=True,
                                allow_unused=True, materialize_grads=True)
    result = [None] * len(inputs)
    for i, gr in zip(wanted, found):
        result[i] = gr
    return result


class _BlockwiseLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_valid, block):
        # Two passes, keys then queries, through two block-sized buffers reused for every block.
        B, H, _, d = q.shape
        m, BH = v.shape[-1], B * H
        S = q.new_zeros(BH, d, m, dtype=torch.float32)
        z = q.new_zeros(BH, d, 1, dtype=torch.float32)
        phi_buf = q.new_empty(BH * block * d, dtype=torch.float32)
        num_buf = q.new_empty(BH * block * m, dtype=torch.float32)

        def phi(x):                                                   # φ(x) into the buffer
            c = x.shape[2]
            out = phi_buf[:BH * c * d].view(B, H, c, d).copy_(x)
            return F.elu_(out).add_(1.0)

        for a, b in _blocks(k.shape[2], block):
            c = b - a
            phi_k = phi(k[:, :, a:b])
            if key_valid is not None:
                phi_k.mul_(key_valid[:, None, a:b, None])
            phi_k = phi_k.view(BH, c, d)
            S.baddbmm_(phi_k.transpose(1, 2), v[:, :, a:b].float().reshape(BH, c, m))
            z.add_(phi_k.sum(1).unsqueeze(-1))
        out = q.new_empty(B, H, q.shape[2], m)
        for a, b in _blocks(q.shape[2], block):
            c = b - a
            phi_q = phi(q[:, :, a:b]).view(BH, c, d)
            num = torch.bmm(phi_q, S, out=num_buf[:BH * c * m].view(BH, c, m))
            num.div_(torch.bmm(phi_q, z).add_(LINEAR_EPS))
            out[:, :, a:b] = num.view(B, H, c, m)
        S, z = S.view(B, H, d, m), z.view(B, H, d)
        ctx.save_for_backward(q, k, v, key_valid, S, z)
        ctx.block = block
        return out

    @staticmethod
    def backward(ctx, g):
        q, k, v, key_valid, S, z = ctx.saved_tensors
        if torch.is_grad_enabled():                                    # double backward wanted
            return (*_differentiable_grads(ctx, (q, k, v), _dense_linear(q, k, v, key_valid), g), None, None)
        block = ctx.block
        dq, dS, dz = torch.empty_like(q), torch.zeros_like(S), torch.zeros_like(z)
        S_leaf, z_leaf = _leaf(S), _leaf(z)
        for a, b in _blocks(q.shape[2], block):
            with torch.enable_grad():
                q_b = _leaf(q[:, :, a:b])
                gq, gS, gz = _vjp((_read_state(q_b, S_leaf, z_leaf),), (g[:, :, a:b],), (q_b, S_leaf, z_leaf))
            dq[:, :, a:b] = gq
            dS += gS
            dz += gz
        dk, dv = torch.empty_like(k), torch.empty_like(v)
        for a, b in _blocks(k.shape[2], block):
            with torch.enable_grad():
                k_b, v_b = _leaf(k[:, :, a:b]), _leaf(v[:, :, a:b])
                gk, gv = _vjp(linear_state(k_b, v_b, _rows(key_valid, a, b)), (dS, dz), (k_b, v_b))
            dk[:, :, a:b] = gk
            dv[:, :, a:b] = gv
        return dq, dk, dv, None, None


class _BlockwiseCausal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_valid, S0, z0, chunk, block):
        save_every = block * CHECKPOINT_BLOCKS if any(ctx.needs_input_grad) else None
        out, (S, z), (saved_S, saved_z) = _causal_sequential(q, k, v, key_valid, (S0, z0), chunk, save_every)
        ctx.save_for_backward(q, k, v, key_valid, S0, z0, saved_S, saved_z)
        ctx.chunk, ctx.block, ctx.save_every = chunk, block, save_every
        return out, S, z

    @staticmethod
    def backward(ctx, g, gS, gz):
        q, k, v, key_valid, S0, z0, saved_S, saved_z = ctx.saved_tensors
        if torch.is_grad_enabled():                                    # double backward wanted
            out, (S, z) = _dense_causal(q, k, v, key_valid, (S0, z0), ctx.chunk)
            grads = _differentiable_grads(ctx, (q, k, v, None, S0, z0), (out, S, z), (g, gS, gz))
            return (*grads, None, None)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dS, dz = gS.float(), gz.float()
        T, every = q.shape[2], ctx.save_every
        for i in reversed(range(len(saved_S))):
            # the running sums at the start of every block of this segment, from the checkpoint
            blocks = [(a, min(a + ctx.block, T)) for a in range(i * every, min((i + 1) * every, T), ctx.block)]
            starts = [(saved_S[i], saved_z[i])]
            for a, b in blocks[:-1]:
                S_b, z_b = linear_state(k[:, :, a:b], v[:, :, a:b], _rows(key_valid, a, b))
                starts.append((starts[-1][0] + S_b, starts[-1][1] + z_b))
            for (a, b), (S_a, z_a) in zip(reversed(blocks), reversed(starts)):
                with torch.enable_grad():
                    q_b, k_b, v_b = _leaf(q[:, :, a:b]), _leaf(k[:, :, a:b]), _leaf(v[:, :, a:b])
                    S_b, z_b = _leaf(S_a), _leaf(z_a)
                    out_b, (S_e, z_e) = _dense_causal(q_b, k_b, v_b, _rows(key_valid, a, b), (S_b, z_b), ctx.chunk)
                    gq, gk, gv, dS, dz = _vjp((out_b, S_e, z_e), (g[:, :, a:b], dS, dz), (q_b, k_b, v_b, S_b, z_b))
                dq[:, :, a:b], dk[:, :, a:b], dv[:, :, a:b] = gq, gk, gv
        return dq, dk, dv, None, dS.to(S0.dtype), dz.to(z0.dtype), None, None
