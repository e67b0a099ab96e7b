"""Perturbed Masking impact matrices (Wu et al., ACL 2020), batched across sentences.

For a sentence of word units x_1..x_n (characters for Chinese segmentation, words for parsing),

    F[i][j] = d(H(x\\{i})_i, H(x\\{i,j})_i)

is how much masking unit j as well changes the representation of the masked unit i at a chosen
layer (H: the hidden states; d: Euclidean or cosine *distance*; F[i][i] = 0). A unit of several
subword tokens is masked as a whole, and its distance is the distance at its first token, or the
average or the maximum over its tokens (`subword` = first / avg / max), as in LividWo's merging of
the rows of a token-level matrix.

    from components.probing import ImpactOptions, impact_matrices
    F = impact_matrices(model.eval(), tokenizer, [["欧", "拉", "是", "数", "学", "家"]],
                        ImpactOptions(layer=-1))[0]                  # (6, 6) float64

How it is computed, versus the reference implementation (one sentence at a time, and for each i
one forward batch of its n masked copies):

- x\\{i,j} = x\\{j,i}: one masked copy gives both F[i][j] (read at i) and F[j][i] (read at j), so a
  sentence needs n + n(n-1)/2 copies instead of n²;
- the copies of many sentences are packed into batches of at most `token_budget` tokens, longest
  first; copies of equal length share a batch without padding (no attention mask, PyTorch's
  fastest attention path), so only the few batches at a change of length are padded;
- only the hidden states at the masked units are kept: the singles x\\{i} first, then each pair
  batch is reduced to distances at once, so memory does not grow with n²;
- the embedding output and the first block's query/key/value projections depend on a position's
  token only: they are computed once per sentence (and once for [MASK]) and gathered into the copies;
- the forward pass stops at the chosen layer, and that last block is evaluated only at the
  positions that are read (its keys and values still cover every position): the other positions'
  attention output and feed-forward at that layer are never needed.
`pairs="adjacent"` computes only F[k][k+1] and F[k+1][k] (2n - 1 copies; all segmentation needs);
the other entries are NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DISTANCES = ("euclidean", "cosine")
SUBWORD_MERGES = ("first", "avg", "max")
PAIR_MODES = ("all", "adjacent")


def check_choice(name: str, value, choices) -> None:
    """Unknown option values are errors that name the valid ones (never a skipped sentence)."""
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(map(str, choices))}")


@dataclass(frozen=True)
class ImpactOptions:
    layer: int | str = -1
    """Hidden layer 1..L (negative counts from the last, -1 = last), or "all" for every layer."""
    distance: str = "euclidean"
    """`euclidean` ||a - b|| or `cosine` 1 - cos(a, b): a distance, never a similarity."""
    subword: str = "first"
    """How a multi-token unit's distance is taken: at its `first` token, `avg` or `max` over them."""
    pairs: str = "all"
    """`all`: the full matrix; `adjacent`: only F[k][k+1] and F[k+1][k] (segmentation)."""
    token_budget: int = 4096
    """Tokens (rows x padded length) per forward pass."""

    def check(self, num_layers: int | None = None) -> None:
        check_choice("distance", self.distance, DISTANCES)
        check_choice("subword merge", self.subword, SUBWORD_MERGES)
        check_choice("pairs mode", self.pairs, PAIR_MODES)
        if not isinstance(self.token_budget, int) or self.token_budget < 1:
            raise ValueError(f"token_budget must be a positive integer, got {self.token_budget!r}")
        if self.layer != "all":
            if not isinstance(self.layer, int) or isinstance(self.layer, bool) or self.layer == 0:
                raise ValueError(f"layer must be 1..L, -L..-1 or 'all', got {self.layer!r} "
                                 "(layer 0, the embeddings, carries no context)")
            if num_layers is not None and not -num_layers <= self.layer <= num_layers:
                raise ValueError(f"layer {self.layer} does not exist: the model has {num_layers} layers")

    def layer_indices(self, num_layers: int) -> list[int]:
        """Indices into `hidden_states` (0 = embeddings, 1..L = layers)."""
        self.check(num_layers)
        if self.layer == "all":
            return list(range(1, num_layers + 1))
        return [self.layer if self.layer > 0 else num_layers + 1 + self.layer]


@dataclass
class Encoded:
    """A sentence of units as model input: [CLS] pieces(unit_0) ... pieces(unit_n-1) [SEP]."""
    units: list[str]
    ids: list[int]
    spans: list[tuple[int, int]]
    """Token positions [start, end) of each unit in `ids`."""

    @property
    def n(self) -> int:
        return len(self.units)


def encode_units(tokenizer, units: list[str], max_length: int | None = None) -> Encoded:
    """Tokenize each unit on its own so that every token belongs to exactly one unit. A unit the
    tokenizer reduces to nothing (e.g. a control character) becomes one [UNK]."""
    if isinstance(units, str):
        raise TypeError("units must be a list of strings (characters or words), not one string")
    if not units:
        raise ValueError("a sentence needs at least one unit")
    ids, spans = [tokenizer.cls_id], []
    for unit in units:
        if not isinstance(unit, str) or not unit:
            raise ValueError(f"units must be non-empty strings, got {unit!r}")
        pieces = [tokenizer.vocab.get(p, tokenizer.unk_id) for p in tokenizer.tokenize(unit)] or [tokenizer.unk_id]
        spans.append((len(ids), len(ids) + len(pieces)))
        ids += pieces
    ids.append(tokenizer.sep_id)
    limit = max_length or tokenizer.max_length
    if len(ids) > limit:
        raise ValueError(f"sentence of {len(units)} units is {len(ids)} tokens with [CLS]/[SEP]; "
                         f"the model takes at most {limit}")
    return Encoded(list(units), ids, spans)


def pack_batches(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Indices of copies grouped into batches, longest first, each with rows x max length within
    the budget (a copy longer than the budget gets a batch of its own). A batch holds one length
    only: without padding there is no attention mask, and PyTorch's fused CPU attention runs
    (with a mask it falls back to a slower path that costs more than the extra passes)."""
    order = sorted(range(len(lengths)), key=lambda k: -lengths[k])
    batches, current, width = [], [], 0
    for k in order:
        if current and ((len(current) + 1) * width > token_budget or lengths[k] != width):
            batches.append(current)
            current, width = [], 0
        width = max(width, lengths[k])
        current.append(k)
    if current:
        batches.append(current)
    return batches


def _distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """(..., D), (..., D) -> (...), in float32 at least: the states may be bfloat16, but their
    differences are small and a half-precision norm would lose them."""
    a, b = a.float(), b.float()
    if kind == "euclidean":
        return torch.linalg.vector_norm(a - b, dim=-1)
    return 1.0 - torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)


class _Runner:
    """Forward passes over masked copies; returns hidden states at requested positions.

    The embedding output and the first block's query/key/value projections of a position depend
    only on its token, so they are computed once per sentence (and once for [MASK] at each
    position) and gathered into each copy instead of being recomputed for every copy."""

    def __init__(self, model, encs: list[Encoded], layers: list[int], mask_id: int, pad_id: int):
        self.model, self.encs, self.layers = model, encs, layers
        device = next(model.parameters()).device
        T = max(len(e.ids) for e in encs)
        ids = torch.tensor([e.ids + [pad_id] * (T - len(e.ids)) for e in encs], dtype=torch.long, device=device)
        self.device = device
        self.lengths = [len(e.ids) for e in encs]
        first = model.layers[0]
        with torch.inference_mode():
            self.x0 = model.embed(ids)                                           # (S, T, H)
            self.qkv0 = _qkv(first, self.x0)                                      # (S, T, 3H)
            self.x0_mask = model.embed(torch.full((1, T), mask_id, dtype=torch.long, device=device))[0]   # (T, H)
            self.qkv0_mask = _qkv(first, self.x0_mask)                            # (T, 3H)

    def run(self, sents: list[int], masked: list[list[int]], reads: list[list[int]]) -> torch.Tensor:
        """Row r is sentence sents[r] with token positions masked[r] set to [MASK]; returns the
        hidden states at positions reads[r], flattened in row order: (sum len(reads[r]), nL, D)."""
        B = len(sents)
        T = max(self.lengths[s] for s in sents)
        dev = self.device
        rows = torch.tensor(sents, device=dev)
        r_idx = torch.tensor([r for r in range(B) for _ in masked[r]], device=dev, dtype=torch.long)
        p_idx = torch.tensor([p for m in masked for p in m], device=dev, dtype=torch.long)
        x0 = self.x0[rows, :T]                                                   # (B, T, H), a copy
        x0[r_idx, p_idx] = self.x0_mask[p_idx]
        qkv0 = self.qkv0[rows, :T]                                               # (B, T, 3H), a copy
        qkv0[r_idx, p_idx] = self.qkv0_mask[p_idx]
        lengths = torch.tensor([self.lengths[s] for s in sents], device=dev)
        valid = torch.arange(T, device=dev)[None] < lengths[:, None]            # (B, T)
        Q = max(len(rd) for rd in reads)
        # (B, Q) read positions, short rows padded with their first read (dropped again below).
        qpos = torch.tensor([rd + rd[:1] * (Q - len(rd)) for rd in reads], device=dev, dtype=torch.long)
        keep = torch.tensor([q < len(rd) for rd in reads for q in range(Q)], device=dev)
        states = _states_from_embeddings(self.model, x0, qkv0, valid, self.layers, qpos)   # (B, Q, nL, D)
        return states.reshape(B * Q, *states.shape[2:])[keep]                   # (R, nL, D)


def _qkv(block, x: torch.Tensor) -> torch.Tensor:
    """(..., H) -> (..., 3H): the block's query, key and value projections side by side."""
    return torch.cat([block.query(x), block.key(x), block.value(x)], dim=-1)


def hidden_states_at(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, layers: list[int],
                     qpos: torch.Tensor) -> torch.Tensor:
    """Hidden states of a bidirectional forward pass at positions qpos (B, Q) of the given layers
    (indices into `hidden_states`): (B, Q, nL, D). Equal to reading `model(...).hidden_states`, but
    the blocks above the highest layer are skipped and that block is computed at qpos only."""
    valid = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    x0 = model.embed(input_ids)                                                  # (B, T, H)
    return _states_from_embeddings(model, x0, _qkv(model.layers[0], x0), valid, layers, qpos)


def _states_from_embeddings(model, x0, qkv0, valid, layers, qpos) -> torch.Tensor:
    """x0: (B, T, H) embedding output; qkv0: (B, T, 3H) its first-block projections; valid: (B, T)
    bool. Runs the blocks up to the highest requested layer, the last one at qpos only."""
    B, T, H = x0.shape
    top = max(layers)
    ctx = model._context("bidirectional", False, False, valid, torch.zeros(B, T, dtype=torch.long,
                                                                             device=x0.device), None)
    key_valid = ctx.key_valid                                                    # None when nothing is padded
    index = qpos[..., None].expand(B, qpos.shape[1], H)                          # (B, Q, H)
    got = {0: torch.gather(x0, 1, index)}
    q, k, v = qkv0.split(H, dim=-1)                                              # (B, T, H) each
    first = model.layers[0]
    if top == 1:
        got[1] = _attend(first, torch.gather(x0, 1, index), torch.gather(q, 1, index), k, v, key_valid)
    else:
        x = _attend(first, x0, q, k, v, key_valid)                              # (B, T, H)
        got[1] = torch.gather(x, 1, index)
        for li in range(2, top):
            x, _ = model.layers[li - 1](x, ctx, None)
            got[li] = torch.gather(x, 1, index)
        block = model.layers[top - 1]
        xq = torch.gather(x, 1, index)                                           # (B, Q, H)
        got[top] = _attend(block, xq, block.query(xq), block.key(x), block.value(x), key_valid)
    return torch.stack([got[i] for i in layers], dim=2)                           # (B, Q, nL, H)


def _attend(block, xq, q, k, v, key_valid) -> torch.Tensor:
    """The rest of components.model.Block (post-LN, eval mode) for queries q (B, Q, H) at residual
    inputs xq (B, Q, H), over keys and values k, v (B, T, H); key_valid: (B, T) bool or None.
    Returns the block's output at those Q positions: (B, Q, H)."""
    from components.attention import linear_attention, softmax_attention
    B, Q, _ = xq.shape
    T = k.shape[1]
    q, k, v = block._heads(q), block._heads(k), block._heads(v)                 # (B, nh, Q|T, hs)
    if block.kind == "softmax":
        allowed = None if key_valid is None else key_valid[:, None, None, :].expand(B, 1, Q, T)
        y = softmax_attention(q, k, v, allowed)                                  # (B, nh, Q, hs)
    else:
        y = linear_attention(q, k, v, key_valid)
    y = y.transpose(1, 2).reshape(B, Q, -1)                                      # (B, Q, H)
    xq = block.attn_norm(xq + block.attn_out(y))
    return block.ffn_norm(xq + block.ffn_out(block.act(block.ffn_in(xq))))


def _positions(span: tuple[int, int], subword: str) -> list[int]:
    return [span[0]] if subword == "first" else list(range(*span))


def _single_states(runner: _Runner, encs: list[Encoded], masks: list[list[list[int]]],
                   reads_of: list[list[list[int]]], token_budget: int) -> tuple[torch.Tensor, list[list[int]]]:
    """The hidden states of every unit's read tokens with that unit alone masked, x\\{i}: (base
    (slots, nL, D), slot_of[s][i] = the first row of unit i of sentence s in base)."""
    singles = [(s, i) for s, e in enumerate(encs) for i in range(e.n)]
    slot_of = [[0] * e.n for e in encs]
    chunks, next_slot = [], 0
    for batch in pack_batches([runner.lengths[s] for s, _ in singles], token_budget):
        sents, masked, reads = [], [], []
        for k in batch:
            s, i = singles[k]
            sents.append(s)
            masked.append(masks[s][i])
            reads.append(reads_of[s][i])
            slot_of[s][i] = next_slot
            next_slot += len(reads_of[s][i])
        chunks.append(runner.run(sents, masked, reads))
    return torch.cat(chunks), slot_of


def impact_matrices(model, tokenizer, sentences: list[list[str]] | list[Encoded],
                    options: ImpactOptions | None = None) -> list[np.ndarray]:
    """Impact matrices of many sentences, batched across sentences.

    sentences: lists of units (or `Encoded`). Returns one float64 array per sentence, (n, n) for
    one layer or (L, n, n) for layer="all"; F[i][i] = 0; with pairs="adjacent" only the entries
    next to the diagonal are computed (the others are NaN)."""
    options = options or ImpactOptions()
    num_layers = model.config.num_hidden_layers
    layers = options.layer_indices(num_layers)
    if model.training:
        raise ValueError("the model is in training mode (dropout makes the matrices random): call model.eval()")
    limit = min(tokenizer.max_length, model.config.max_position_embeddings)
    encs = [s if isinstance(s, Encoded) else encode_units(tokenizer, s, limit) for s in sentences]
    for e in encs:
        if len(e.ids) > limit:
            raise ValueError(f"sentence of {e.n} units is {len(e.ids)} tokens; the model takes at most {limit}")
    nL = len(layers)
    out = [np.full((nL, e.n, e.n), np.nan) for e in encs]
    for F in out:
        for i in range(F.shape[1]):
            F[:, i, i] = 0.0
    if not encs:
        return []
    runner = _Runner(model, encs, layers, tokenizer.mask_id, tokenizer.pad_id)
    sub = options.subword
    # Per unit: its token positions (all masked) and the positions whose states are read.
    masks = [[list(range(*sp)) for sp in e.spans] for e in encs]
    reads_of = [[_positions(sp, sub) for sp in e.spans] for e in encs]
    with torch.inference_mode():
        # 1. Singles x\{i}: the base states of every unit's read tokens.
        base, slot_of = _single_states(runner, encs, masks, reads_of, options.token_budget)

        # 2. Pairs x\{i,j}, i < j: read unit i (-> F[i][j]) and unit j (-> F[j][i]).
        if options.pairs == "all":
            pairs = [(s, i, j) for s, e in enumerate(encs) for i in range(e.n) for j in range(i + 1, e.n)]
        else:
            pairs = [(s, i, i + 1) for s, e in enumerate(encs) for i in range(e.n - 1)]
        reduce = "amax" if sub == "max" else "mean"
        for batch in pack_batches([runner.lengths[s] for s, _, _ in pairs], options.token_budget):
            sents, masked, reads = [], [], []
            base_idx, target = [], []                     # per read: row of its base state, entry id
            rows, cols, owners = [], [], []               # entry id -> F[owner][row][col]
            for k in batch:
                s, i, j = pairs[k]
                ri, rj = reads_of[s][i], reads_of[s][j]
                sents.append(s)
                masked.append(masks[s][i] + masks[s][j])
                reads.append(ri + rj)
                e_id = len(rows)
                base_idx += range(slot_of[s][i], slot_of[s][i] + len(ri))
                base_idx += range(slot_of[s][j], slot_of[s][j] + len(rj))
                target += [e_id] * len(ri) + [e_id + 1] * len(rj)
                rows += (i, j)
                cols += (j, i)
                owners += (s, s)
            states = runner.run(sents, masked, reads)                            # (R, nL, D)
            dev = states.device
            d = _distance(states, base[torch.tensor(base_idx, device=dev)], options.distance)  # (R, nL)
            tgt = torch.tensor(target, device=dev)
            merged = torch.zeros(len(rows), nL, dtype=d.dtype, device=dev).scatter_reduce(
                0, tgt[:, None].expand(-1, nL), d, reduce=reduce, include_self=False)   # (E, nL)
            values = merged.double().cpu().numpy()      # to the host on purpose: the matrices are numpy
            owners_a = np.asarray(owners)
            for s in np.unique(owners_a):
                sel = owners_a == s
                out[s][:, np.asarray(rows)[sel], np.asarray(cols)[sel]] = values[sel].T
    return [F if options.layer == "all" else F[0] for F in out]


def impact_matrix(model, tokenizer, units: list[str], options: ImpactOptions | None = None) -> np.ndarray:
    """The impact matrix of one sentence (see `impact_matrices`)."""
    return impact_matrices(model, tokenizer, [units], options)[0]
