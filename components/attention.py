"""Attention kernels: softmax (PyTorch SDPA) and linear attention in three exact forms.

Linear attention (Katharopoulos et al., 2020) replaces softmax(q·k) with φ(q)·φ(k), φ(x) = elu(x) + 1:

    out_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ  /  (φ(q_i)ᵀ Σ_j φ(k_j) + eps)

Scaling convention: φ is applied to the raw projections, with no 1/sqrt(d) factor (as in
fast-transformers); eps = 1e-6 guards the normaliser. Sums are accumulated in float32.

Three forms with identical outputs:
- `linear_attention`        non-causal, O(n): key padding zeroes rows of φ(K).
- `causal_linear_attention` causal, chunked: within a chunk an explicit C×C product, across chunks
                            running sums, so memory is O(n·C + (n/C)·d·m) and no n×n matrix exists.
                            Takes and returns the running state (S, z) so decoding can continue it.
- `recurrent_linear_attention` one new position given the running state (S, z).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LINEAR_EPS = 1e-6
DEFAULT_CHUNK = 64


def feature_map(x: torch.Tensor) -> torch.Tensor:
    """φ(x) = elu(x) + 1, strictly positive; computed in float32."""
    return F.elu(x.float()) + 1.0


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
    return torch.einsum("bhsd,bhsm->bhdm", phi_k, v.float()), phi_k.sum(dim=2)


def linear_attention(q, k, v, key_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Non-causal linear attention. q: (B, nh, T, d), k: (B, nh, S, d), v: (B, nh, S, m);
    key_valid: (B, S) bool. Returns (B, nh, T, m) in q's dtype."""
    phi_q, phi_k = feature_map(q), feature_map(k)
    if key_valid is not None:
        phi_k = phi_k * key_valid[:, None, :, None].to(phi_k.dtype)
    kv = torch.einsum("bhsd,bhsm->bhdm", phi_k, v.float())              # (B, nh, d, m)
    z = phi_k.sum(dim=2)                                                 # (B, nh, d)
    num = torch.einsum("bhtd,bhdm->bhtm", phi_q, kv)                     # (B, nh, T, m)
    den = torch.einsum("bhtd,bhd->bht", phi_q, z)[..., None] + LINEAR_EPS
    return (num / den).to(q.dtype)


def causal_linear_attention(q, k, v, key_valid: torch.Tensor | None = None, state=None,
                            chunk: int = DEFAULT_CHUNK):
    """Causal linear attention, chunked. q, k: (B, nh, T, d), v: (B, nh, T, m).

    key_valid: (B, T) bool (padded keys contribute nothing). state: optional (S, z) running sums of
    earlier positions, S: (B, nh, d, m), z: (B, nh, d). Returns (out (B, nh, T, m), (S, z)).
    """
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
    chunk_kv = torch.einsum("bhncd,bhncm->bhndm", Kc, Vc)               # (B, nh, n, d, m)
    chunk_z = Kc.sum(dim=3)                                              # (B, nh, n, d)
    # Exclusive prefix sums over chunks (shifted cumsum, no subtraction), plus the carried state.
    S_incl = torch.cumsum(chunk_kv, dim=2) + S0[:, :, None]
    z_incl = torch.cumsum(chunk_z, dim=2) + z0[:, :, None]
    S_prev = torch.cat([S0[:, :, None], S_incl[:, :, :-1]], dim=2)
    z_prev = torch.cat([z0[:, :, None], z_incl[:, :, :-1]], dim=2)
    inter_num = torch.einsum("bhncd,bhndm->bhncm", Qc, S_prev)           # (B, nh, n, C, m)
    inter_den = torch.einsum("bhncd,bhnd->bhnc", Qc, z_prev)             # (B, nh, n, C)
    tri = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    A = torch.einsum("bhncd,bhned->bhnce", Qc, Kc) * tri                 # (B, nh, n, C, C)
    num = inter_num + A @ Vc
    den = inter_den + A.sum(dim=-1) + LINEAR_EPS
    out = (num / den[..., None]).reshape(B, H, n * C, m)[:, :, :T]
    return out.to(q.dtype), (S_incl[:, :, -1], z_incl[:, :, -1])


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
