"""Incremental-decoding cache.

A prefix (a UniLM source, or a dialogue history) is encoded once; after that each new token costs
one position's computation. Per layer the cache holds keys/values (softmax attention) or the running
sums (S, z) of linear attention. `valid` marks which cached positions are real tokens (padded
sources leave holes), and `lengths` counts real tokens per row, which gives the next position id.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LayerCache:
    k: torch.Tensor | None = None      # (B, nh, P, hs) softmax attention
    v: torch.Tensor | None = None
    S: torch.Tensor | None = None      # (B, nh, hs, hs) linear attention, float32
    z: torch.Tensor | None = None      # (B, nh, hs)

    def map(self, fn) -> LayerCache:
        return LayerCache(*(None if t is None else fn(t) for t in (self.k, self.v, self.S, self.z)))


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
