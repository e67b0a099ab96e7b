"""Incremental-decoding cache.

A prefix (a UniLM source, or a dialogue history) is encoded once; after that each new token costs
one position's computation. Per layer the cache holds keys/values (softmax attention) or the running
sums (S, z) of linear attention. `valid` marks which cached positions are real tokens (padded
sources leave holes), and `lengths` counts real tokens per row, which gives the next position id.

Keys and values live in buffers with room to grow (`LayerCache.append`): a decoding step writes one
position in place instead of copying the whole cache (a concatenation per step and layer would copy
O(P) memory, which dominates batched decoding). Buffers are shared copy-on-write: appending to an
older state of a cache, whose next slot another cache has already written, copies first, so every
Cache object stays valid whatever is appended to which.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MIN_HEADROOM = 32       # free positions a new buffer gets beyond what it holds (at least; it doubles)


@dataclass
class LayerCache:
    k: torch.Tensor | None = None      # (B, nh, P, hs) softmax attention: the filled positions ...
    v: torch.Tensor | None = None
    S: torch.Tensor | None = None      # (B, nh, hs, hs) linear attention, float32
    z: torch.Tensor | None = None      # (B, nh, hs)
    k_buf: torch.Tensor | None = None  # ... as views of these (B, nh, capacity, hs) buffers
    v_buf: torch.Tensor | None = None
    written: list[int] | None = None   # positions written in the buffers, shared by every view of them

    def map(self, fn) -> LayerCache:
        """Apply a row operation (expand, select) to every tensor; buffers keep their room."""
        if self.k_buf is None:
            return LayerCache(*(None if t is None else fn(t) for t in (self.k, self.v, self.S, self.z)))
        P = self.k.shape[2]
        k_buf, v_buf = fn(self.k_buf), fn(self.v_buf)
        return LayerCache(k_buf[:, :, :P], v_buf[:, :, :P], k_buf=k_buf, v_buf=v_buf, written=[P])

    def append(self, k: torch.Tensor, v: torch.Tensor) -> LayerCache:
        """Keys and values of T new positions (B, nh, T, hs) after the P cached ones (an empty
        cache just holds them: a prefix costs no copy)."""
        if self.k is None:
            return LayerCache(k=k, v=v)
        if torch.is_grad_enabled() and (k.requires_grad or self.k.requires_grad):
            # differentiable decoding: keep autograd's view of a plain concatenation
            return LayerCache(k=torch.cat([self.k, k], dim=2), v=torch.cat([self.v, v], dim=2))
        P, T = self.k.shape[2], k.shape[2]
        k_buf, v_buf, written = self.k_buf, self.v_buf, self.written
        if k_buf is None or written[0] != P or k_buf.shape[2] < P + T:   # no room, or forked
            B, nh, _, hs = self.k.shape
            capacity = 2 * (P + T) + MIN_HEADROOM
            k_buf = self.k.new_empty(B, nh, capacity, hs)
            v_buf = self.v.new_empty(B, nh, capacity, v.shape[-1])
            k_buf[:, :, :P], v_buf[:, :, :P] = self.k, self.v
            written = [P]
        k_buf[:, :, P:P + T], v_buf[:, :, P:P + T] = k, v
        written[0] = P + T
        return LayerCache(k_buf[:, :, :P + T], v_buf[:, :, :P + T], k_buf=k_buf, v_buf=v_buf, written=written)


@dataclass
class Cache:
    layers: list[LayerCache] = field(default_factory=list)
    valid: torch.Tensor | None = None     # (B, P) bool: cached position holds a real token
    lengths: torch.Tensor | None = None   # (B,) long: real tokens so far (= next position id)

    @property
    def batch_size(self) -> int:
        return 0 if self.lengths is None else int(self.lengths.shape[0])

    @property
    def is_empty(self) -> bool:
        return self.lengths is None

    def _map(self, fn) -> Cache:
        return Cache([layer.map(fn) for layer in self.layers], fn(self.valid), fn(self.lengths))

    def expand(self, n: int) -> Cache:
        """Repeat every row n times (row b -> rows b*n .. b*n+n-1): n samples or beams per source,
        without encoding the source again."""
        return self._map(lambda t: t.repeat_interleave(n, dim=0))

    def select(self, index: torch.Tensor) -> Cache:
        """Keep / reorder rows (beam search reordering, dropping finished sequences)."""
        index = index.to(self.lengths.device)
        return self._map(lambda t: t.index_select(0, index))
