"""Batched, cached generation: greedy, beam search and sampling over the shared Transformer.

    gens = generate(model, input_ids, segment_ids, attention_mask, DecodingConfig(...),
                    mask_mode="unilm", eos_token_id=tok.sep_id)        # gens[i][j]: j-th output of input i

The prefix (a UniLM source `[CLS] src [SEP]`, or a dialogue history) is encoded once; its cache is
expanded for n samples or beams; every step then computes one position per live row. Rows that
finish are dropped from the cache, so they stop costing compute. `use_cache=False` recomputes the
whole sequence every step (the way decoders without a cache work; kept for comparison).

New tokens take segment 1 after a UniLM source, and continue the prompt's last segment in causal
mode (a plain LM never saw segment 1), unless `target_segment_id` says otherwise.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from components.decoding.config import DecodingConfig, check_seed
from components.decoding.filters import apply_repetition_penalty, ban_repeated_ngrams, filter_logits
from components.decoding.termination import termination_log_probs

NEG_INF = float("-inf")


@dataclass
class Generation:
    token_ids: list[int]            # generated tokens, EOS excluded
    finish_reason: str              # "eos" | "length"
    score: float                    # sum of the model's log-probabilities of the chosen tokens (EOS included)
    normalized_score: float         # score / length ** length_penalty (the beam ranking)


def non_termination_ratio(generations: list[list[Generation]] | list[Generation]) -> float:
    """Share of outputs that hit the length cap instead of ending with EOS (consistency-lm's metric)."""
    flat = [g for row in generations for g in (row if isinstance(row, list) else [row])]
    return sum(g.finish_reason == "length" for g in flat) / max(1, len(flat))


class _Stepper:
    """Owns the model state of the live rows: the cache (or, without cache, the full sequences)."""

    def __init__(self, model, input_ids, segment_ids, attention_mask, mask_mode, use_cache: bool):
        self.model, self.mask_mode, self.use_cache = model, mask_mode, use_cache
        if use_cache:
            out = model(input_ids, segment_ids, attention_mask, mask_mode=mask_mode, use_cache=True,
                        return_logits=False)
            self.cache = out.cache
            last = attention_mask.sum(1) - 1                                      # last real position
            self.logits = model.lm_logits(out.last_hidden_state[torch.arange(len(last)), last])   # (B, V)
        else:
            self.rows = [(ids[m.bool()].tolist(), seg[m.bool()].tolist())
                         for ids, seg, m in zip(input_ids, segment_ids, attention_mask)]
            self.logits = self._recompute()

    def _recompute(self) -> torch.Tensor:
        T = max(len(r[0]) for r in self.rows)
        ids = torch.zeros(len(self.rows), T, dtype=torch.long)
        seg = torch.zeros_like(ids)
        mask = torch.zeros_like(ids)
        for i, (r_ids, r_seg) in enumerate(self.rows):
            ids[i, :len(r_ids)], seg[i, :len(r_ids)], mask[i, :len(r_ids)] = (
                torch.tensor(r_ids), torch.tensor(r_seg), 1)
        out = self.model(ids, seg, mask, mask_mode=self.mask_mode, return_logits=False)
        last = mask.sum(1) - 1
        return self.model.lm_logits(out.last_hidden_state[torch.arange(len(last)), last])

    def expand(self, n: int) -> None:
        if n == 1:
            return
        self.logits = self.logits.repeat_interleave(n, dim=0)
        if self.use_cache:
            self.cache = self.cache.expand(n)
        else:
            self.rows = [r for r in self.rows for _ in range(n)]

    def select(self, index: torch.Tensor) -> None:
        """Keep / reorder rows (finished rows dropped, beams reordered)."""
        self.logits = self.logits.index_select(0, index)
        if self.use_cache:
            self.cache = self.cache.select(index)
        else:
            self.rows = [(list(self.rows[i][0]), list(self.rows[i][1])) for i in index.tolist()]

    def advance(self, tokens: torch.Tensor, segments: torch.Tensor) -> None:
        """Append one token per live row and compute the next logits."""
        if self.use_cache:
            out = self.model(tokens[:, None], segments[:, None], cache=self.cache, return_logits=False)
            self.cache = out.cache
            self.logits = self.model.lm_logits(out.last_hidden_state[:, -1])
        else:
            for row, t, s in zip(self.rows, tokens.tolist(), segments.tolist()):
                row[0].append(t)
                row[1].append(s)
            self.logits = self._recompute()


class _Uniforms:
    """The random numbers of sampling: one stream per input, seeded with the decoding seed, from
    which every step draws one number for each of the input's n rows (alive or finished). So an
    input's samples do not depend on the other inputs of the batch: a request gives the same
    samples decoded alone or batched with others (as a server batches them)."""

    def __init__(self, seeds: list[int | None], n: int):
        # Without a seed, fresh entropy; never torch.seed(), which would reseed the caller's
        # global generator (a training loop that decodes for evaluation, say).
        self.streams = [torch.Generator().manual_seed(secrets.randbits(63) if s is None else s) for s in seeds]
        self.n = n

    def draw(self) -> torch.Tensor:
        return torch.cat([torch.rand(self.n, generator=g) for g in self.streams])      # (inputs * n,)


def _pick(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling, one index per row: the first whose cumulative probability exceeds
    u * total (tokens of probability 0 are never picked). probs: (rows, K); u: (rows,) in [0, 1)."""
    cdf = probs.cumsum(-1)
    x = (u.to(cdf.dtype) * cdf[:, -1])[:, None]
    return torch.searchsorted(cdf, x, right=True).clamp_(max=probs.shape[-1] - 1)          # (rows, 1)


def _sample(logits: torch.Tensor, config: DecodingConfig, eos_id: int, u: torch.Tensor) -> torch.Tensor:
    """One token per row from softmax over the tokens that top-k / nucleus (/ consistent) keep,
    drawn with the row's uniform number u.

    With top-k, at most k (+ EOS when consistent) tokens per row remain: sample among those
    candidates, the same distribution without a multinomial over the whole vocabulary. With top-k
    alone and no tie at the cut (the (k+1)-th value below the k-th), the candidates come straight
    from one topk, without a mask over the vocabulary."""
    k, V = config.top_k, logits.shape[-1]
    if k is not None and config.top_p is None and k < V:
        vals, idx = logits.topk(k + 1, dim=-1)
        if bool((vals[:, k - 1] > vals[:, k]).all()):
            cand, idx = vals[:, :k], idx[:, :k]
            if config.consistent:                                   # EOS stays a candidate, once
                has_eos = (idx == eos_id).any(dim=-1, keepdim=True)
                eos_logit = logits[:, eos_id:eos_id + 1].masked_fill(has_eos, NEG_INF)
                cand = torch.cat([cand, eos_logit], dim=1)
                idx = torch.cat([idx, torch.full_like(idx[:, :1], eos_id)], dim=1)
            return idx.gather(1, _pick(cand.softmax(-1), u)).squeeze(1)
    filtered = filter_logits(logits, k, config.top_p, eos_id, config.consistent)
    if k is not None:
        cand, idx = filtered.topk(min(V, k + int(config.consistent)), dim=-1)   # every kept token
        return idx.gather(1, _pick(cand.softmax(-1), u)).squeeze(1)
    return _pick(filtered.softmax(-1), u).squeeze(1)


def _log_probs(model, logits, eos_id, step, survival):
    cfg = model.config
    if cfg.termination == "none":
        return torch.log_softmax(logits.float(), dim=-1), survival
    return termination_log_probs(logits, eos_id, cfg.termination_epsilon, cfg.termination, step, survival)


def default_target_segment(segment_ids: torch.Tensor, attention_mask: torch.Tensor, mask_mode: str) -> torch.Tensor:
    """The new tokens' segment id when the caller names none: UniLM's target segment 1 for a
    seq2seq prefix; in causal mode the segment of each prompt's last real token, so a plain
    language model continues its text with the segment ids it was trained on (all 0, usually)."""
    if mask_mode != "causal":
        return torch.ones(segment_ids.shape[0], dtype=torch.long)
    last = attention_mask.sum(1) - 1
    return segment_ids[torch.arange(segment_ids.shape[0]), last].long()


def _prepare(model, input_ids, segment_ids, attention_mask, config, eos_token_id, target_segment_id, mask_mode):
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    segment_ids = torch.zeros_like(input_ids) if segment_ids is None else segment_ids
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    if not 0 <= eos_token_id < model.config.vocab_size:
        raise ValueError(f"eos_token_id {eos_token_id} is outside the vocabulary")
    if bool((attention_mask.sum(1) == 0).any()):
        raise ValueError("every input needs at least one token")
    config.validate_for(model.config, int(attention_mask.sum(1).max()))
    if target_segment_id is None:
        target_segment_id = default_target_segment(segment_ids, attention_mask, mask_mode)
    target = torch.as_tensor(target_segment_id, dtype=torch.long)
    target = target.expand(input_ids.shape[0]).clone() if target.dim() == 0 else target
    if target.shape != (input_ids.shape[0],):
        raise ValueError("target_segment_id must be an int or one id per input")
    if int(target.max()) >= model.config.type_vocab_size:
        raise ValueError(f"target_segment_id {int(target.max())} >= type_vocab_size {model.config.type_vocab_size}")
    return segment_ids, attention_mask, target


@torch.no_grad()
def stream_generate(model, input_ids: torch.Tensor, segment_ids: torch.Tensor | None,
                    attention_mask: torch.Tensor | None, config: DecodingConfig, *, eos_token_id: int,
                    mask_mode: str = "unilm", target_segment_id: int | torch.Tensor | None = None,
                    use_cache: bool = True, seeds: list[int | None] | None = None
                    ) -> Iterator[list[tuple[int, int]] | list[list[Generation]]]:
    """Greedy or sampled decoding, step by step. Yields, after every step, the list of
    (output row, token id) pairs appended in that step (EOS not included; output row r is input
    r // n, sample r % n), and finally the complete result as `generate` returns it. `seeds`
    gives every input its own sampling seed (None: fresh) in place of `config.seed`."""
    if config.strategy == "beam":
        raise ValueError("beam search cannot stream (beams are reordered until the end); use generate()")
    segment_ids, attention_mask, target = _prepare(model, input_ids, segment_ids, attention_mask, config,
                                                   eos_token_id, target_segment_id, mask_mode)
    model.eval()
    B, n = input_ids.shape[0], config.num_return_sequences
    N = B * n
    if seeds is not None:
        if len(seeds) != B:
            raise ValueError(f"seeds has {len(seeds)} entries for {B} inputs")
        for seed in seeds:
            check_seed(seed)
    uniforms = _Uniforms(seeds or [config.seed] * B, n) if config.strategy == "sample" else None
    stepper = _Stepper(model, input_ids, segment_ids, attention_mask, mask_mode, use_cache)
    stepper.expand(n)
    target = target.repeat_interleave(n)
    live = torch.arange(N)                                   # output rows still generating
    tokens: list[list[int]] = [[] for _ in range(N)]
    scores = torch.zeros(N, dtype=torch.float64)
    reasons = ["length"] * N
    survival = torch.zeros(N)
    for t in range(1, config.max_new_tokens + 1):
        logp, new_survival = _log_probs(model, stepper.logits, eos_token_id, torch.full((len(live),), t),
                                        survival[live])
        logits = logp
        if config.repetition_penalty != 1.0:
            width = max(len(tokens[r]) for r in live.tolist())
            done = torch.full((len(live), width), -1, dtype=torch.long)
            for i, r in enumerate(live.tolist()):
                done[i, :len(tokens[r])] = torch.tensor(tokens[r], dtype=torch.long)
            logits = apply_repetition_penalty(logits, done, config.repetition_penalty)
        if config.no_repeat_ngram_size:
            logits = ban_repeated_ngrams(logits, [tokens[r] for r in live.tolist()], config.no_repeat_ngram_size)
        if t <= config.min_new_tokens:
            logits = logits.clone()
            logits[:, eos_token_id] = NEG_INF
        if config.strategy == "greedy":
            choice = logits.argmax(dim=-1)
        else:
            if config.temperature != 1.0:
                logits = logits / config.temperature
            u = uniforms.draw().to(logits.device)[live]
            choice = _sample(logits, config, eos_token_id, u)
        scores[live] += logp.gather(1, choice[:, None]).squeeze(1).double()
        survival[live] = new_survival
        ended = choice == eos_token_id
        step_events = []
        for r, c in zip(live.tolist(), choice.tolist()):         # plain ints: no per-row tensor ops
            if c == eos_token_id:
                reasons[r] = "eos"
            else:
                tokens[r].append(c)
                step_events.append((r, c))
        yield step_events
        keep = (~ended).nonzero().squeeze(1)
        if len(keep) == 0 or t == config.max_new_tokens:
            break
        if len(keep) < len(live):                            # finished rows stop costing compute
            stepper.select(keep)
            live, choice = live[keep], choice[keep]
        stepper.advance(choice, target[live])
    results = [Generation(tokens[r], reasons[r], float(scores[r]),
                          float(scores[r]) / max(1, len(tokens[r]) + (reasons[r] == "eos")))
               for r in range(N)]
    yield [results[i * n:(i + 1) * n] for i in range(B)]


def generate(model, input_ids: torch.Tensor, segment_ids: torch.Tensor | None = None,
             attention_mask: torch.Tensor | None = None, config: DecodingConfig | None = None, *,
             eos_token_id: int, mask_mode: str = "unilm", target_segment_id: int | torch.Tensor | None = None,
             use_cache: bool = True, seeds: list[int | None] | None = None) -> list[list[Generation]]:
    """Decode every input; returns, per input, `num_return_sequences` generations (beam: best first).
    With `seeds` (one per input), each input samples with its own seed, as if decoded alone.
    `target_segment_id` (an int or one per input) is the new tokens' segment id; None: 1 (UniLM's
    target segment) in unilm mode, the prompt's last segment id in causal mode (dialogue passes
    the reply's own)."""
    config = config or DecodingConfig()
    if config.strategy == "beam":
        return _beam_search(model, input_ids, segment_ids, attention_mask, config, eos_token_id, mask_mode,
                            target_segment_id, use_cache)
    *_, result = stream_generate(model, input_ids, segment_ids, attention_mask, config, eos_token_id=eos_token_id,
                                 mask_mode=mask_mode, target_segment_id=target_segment_id, use_cache=use_cache,
                                 seeds=seeds)
    return result


@torch.no_grad()
def _beam_search(model, input_ids, segment_ids, attention_mask, config, eos_token_id, mask_mode,
                 target_segment_id, use_cache) -> list[list[Generation]]:
    """Standard beam search: each step keeps the W best continuations of every input; a beam that
    emits EOS becomes a finished hypothesis ranked by score / length ** length_penalty; an input is
    done once it has W finished hypotheses (or at max_new_tokens, when live beams are finished as
    "length")."""
    segment_ids, attention_mask, target = _prepare(model, input_ids, segment_ids, attention_mask, config,
                                                   eos_token_id, target_segment_id, mask_mode)
    model.eval()
    B, W = input_ids.shape[0], config.num_beams
    stepper = _Stepper(model, input_ids, segment_ids, attention_mask, mask_mode, use_cache)
    stepper.expand(W)
    beam_scores = torch.full((B, W), NEG_INF, dtype=torch.float64)
    beam_scores[:, 0] = 0.0                                  # all beams start equal: expand one of them
    beams: list[list[list[int]]] = [[[] for _ in range(W)] for _ in range(B)]
    survival = torch.zeros(B * W)
    finished: list[list[Generation]] = [[] for _ in range(B)]
    live_inputs = list(range(B))
    lp_pow = config.length_penalty

    def norm(score: float, length: int) -> float:
        return score / max(1, length) ** lp_pow

    for t in range(1, config.max_new_tokens + 1):
        A = len(live_inputs)
        logp, new_survival = _log_probs(model, stepper.logits, eos_token_id, torch.full((A * W,), t), survival)
        logits = logp
        if config.no_repeat_ngram_size:
            logits = ban_repeated_ngrams(logits, [beams[b][w] for b in live_inputs for w in range(W)],
                                         config.no_repeat_ngram_size)
        if t <= config.min_new_tokens:
            logits = logits.clone()
            logits[:, eos_token_id] = NEG_INF
        V = logits.shape[-1]
        total = beam_scores[live_inputs].view(A, W, 1) + logits.double().view(A, W, V)   # (A, W, V)
        flat = total.view(A, W * V)
        cand_scores, cand_idx = torch.sort(flat, dim=1, descending=True, stable=True)
        cand_scores, cand_idx = cand_scores[:, :2 * W], cand_idx[:, :2 * W]
        next_rows, next_tokens, next_scores, next_survival = [], [], [], []
        still: list[int] = []
        for a, b in enumerate(live_inputs):
            picked = 0
            new_beams = []
            for s, idx in zip(cand_scores[a].tolist(), cand_idx[a].tolist()):
                if s == NEG_INF:
                    break
                w, tok = divmod(idx, V)
                if tok == eos_token_id:
                    seq = beams[b][w]
                    finished[b].append(Generation(list(seq), "eos", s, norm(s, len(seq) + 1)))
                    continue
                new_beams.append((w, tok, s))
                picked += 1
                if picked == W:
                    break
            done = len(finished[b]) >= W or not new_beams
            if done:
                continue
            while len(new_beams) < W:                       # too few live candidates: pad with dead beams
                new_beams.append((new_beams[0][0], new_beams[0][1], NEG_INF))
            still.append(b)
            for w, tok, s in new_beams:
                next_rows.append(a * W + w)
                next_tokens.append(tok)
                next_scores.append(s)
                next_survival.append(float(new_survival[a * W + w]))
            beams[b] = [beams[b][w] + [tok] for w, tok, _ in new_beams]
            beam_scores[b] = torch.tensor([s for _, _, s in new_beams], dtype=torch.float64)
        live_inputs = still
        if not live_inputs or t == config.max_new_tokens:
            break
        index = torch.tensor(next_rows)
        stepper.select(index)
        survival = torch.tensor(next_survival)
        segs = target[torch.tensor(live_inputs)].repeat_interleave(W)
        stepper.advance(torch.tensor(next_tokens), segs)
    for b in live_inputs:                                    # cap reached: live beams end as "length"
        for w in range(W):
            s = float(beam_scores[b, w])
            if s > NEG_INF:
                finished[b].append(Generation(list(beams[b][w]), "length", s, norm(s, len(beams[b][w]))))
    out = []
    for b in range(B):
        ranked = sorted(finished[b], key=lambda g: g.normalized_score, reverse=True)
        out.append(ranked[:config.num_return_sequences])
    return out
