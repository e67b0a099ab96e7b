"""Batched, cached generation: greedy decoding and sampling (beam search: beam.py) over the shared
Transformer.

    gens = generate(model, input_ids, segment_ids, attention_mask, DecodingConfig(...),
                    mask_mode="unilm", eos_token_id=tok.sep_id)        # gens[i][j]: j-th output of input i

The prefix (a UniLM source `[CLS] src [SEP]`, or a dialogue history) is encoded once; its cache is
expanded for n samples or beams; every step then computes one position per live row. Rows that
finish are dropped from the cache, so they stop costing compute. `use_cache=False` recomputes the
whole sequence every step (the way decoders without a cache work; kept for comparison).

Every strategy runs the model's log-probabilities through one chain of logits processors
(processors.py): repetition penalty, n-gram bans, minimum length, then for sampling temperature,
top-k and top-p. Sampling draws by inverse CDF over the kept tokens in vocabulary order, with one
uniform number per row and step (`_Uniforms`).

New tokens take segment 1 after a UniLM source, and continue the prompt's last segment in causal
mode (a plain LM never saw segment 1), unless `target_segment_id` says otherwise.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import torch

from components.decoding.beam import beam_search
from components.decoding.config import DecodingConfig, check_seed
from components.decoding.processors import History, build_chain
from components.decoding.steps import Generation, Stepper, log_probs, non_termination_ratio, prepare

__all__ = ["Generation", "generate", "non_termination_ratio", "stream_generate"]


class _Uniforms:
    """The random numbers of sampling: one stream per input, seeded with the decoding seed, from
    which every step draws one number for each of the input's n rows (alive or finished). So an
    input's samples do not depend on the other inputs of the batch: a request gives the same
    samples decoded alone or batched with others (as a server batches them)."""

    def __init__(self, seeds: list[int | None], n: int):
        # Without a seed, fresh entropy; never torch.seed(), which would reseed the caller's
        # global generator (a training loop that decodes for evaluation, say). The generators are
        # CPU ones on purpose, whatever the model's device: a seed then gives the same samples on
        # a GPU as on the CPU (CUDA generators draw other numbers), at the cost of one small
        # (rows,) host-to-device copy per step.
        self.streams = [torch.Generator("cpu").manual_seed(secrets.randbits(63) if s is None else s)
                        for s in seeds]
        self.n = n

    def draw(self, device) -> torch.Tensor:
        """(inputs * n,) uniform numbers on `device`."""
        return torch.cat([torch.rand(self.n, generator=g, device="cpu") for g in self.streams]).to(device)


def _pick(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling, one index per row: the first whose cumulative probability exceeds
    u * total (tokens of probability 0 are never picked). probs: (rows, K); u: (rows,) in [0, 1)."""
    cdf = probs.cumsum(-1)
    x = (u.to(cdf.dtype) * cdf[:, -1])[:, None]
    return torch.searchsorted(cdf, x, right=True).clamp_(max=probs.shape[-1] - 1)          # (rows, 1)


def _sample(scores: torch.Tensor, top_k: int | None, u: torch.Tensor) -> torch.Tensor:
    """One token per row from softmax(scores) (the chain's output: filtered tokens are -inf),
    drawn with the row's uniform number u over the tokens in vocabulary order. With top-k, at most
    k + 1 tokens (k, and EOS when consistent) are finite: only those enter the CDF, the same
    draw without a softmax over the whole vocabulary."""
    V = scores.shape[-1]
    if top_k is not None and top_k + 1 < V:
        cand, idx = scores.topk(top_k + 1, dim=-1)                  # every kept token (and -inf ones)
        idx, order = idx.sort(dim=-1)                               # vocabulary order
        cand = cand.gather(1, order)
        return idx.gather(1, _pick(cand.softmax(-1), u)).squeeze(1)
    return _pick(scores.softmax(-1), u).squeeze(1)


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
    input_ids, segment_ids, attention_mask, target = prepare(
        model, input_ids, segment_ids, attention_mask, config, eos_token_id, target_segment_id, mask_mode)
    model.eval()
    B, n = input_ids.shape[0], config.num_return_sequences
    N = B * n
    if seeds is not None:
        if len(seeds) != B:
            raise ValueError(f"seeds has {len(seeds)} entries for {B} inputs")
        for seed in seeds:
            check_seed(seed)
    uniforms = _Uniforms(seeds or [config.seed] * B, n) if config.strategy == "sample" else None
    stepper = Stepper(model, input_ids, segment_ids, attention_mask, mask_mode, use_cache)
    chain = build_chain(config, eos_token_id)
    stepper.expand(n)
    target = target.repeat_interleave(n)
    device = input_ids.device                                # the decoding state lives by the model
    live = torch.arange(N, device=device)                    # output rows still generating
    tokens: list[list[int]] = [[] for _ in range(N)]
    scores = torch.zeros(N, dtype=torch.float64, device=device)
    reasons = ["length"] * N
    survival = torch.zeros(N, device=device)
    for t in range(1, config.max_new_tokens + 1):
        live_rows = live.tolist()
        logp, new_survival = log_probs(model, stepper.logits, eos_token_id,
                                       torch.full((len(live_rows),), t, device=device), survival[live])
        processed = chain(logp, History([tokens[r] for r in live_rows], t, device=device))
        if config.strategy == "greedy":
            choice = processed.argmax(dim=-1)
        else:
            choice = _sample(processed, config.top_k, uniforms.draw(device)[live])
        scores[live] += logp.gather(1, choice[:, None]).squeeze(1).double()
        survival[live] = new_survival
        ended = choice == eos_token_id
        step_events = []
        # to the host on purpose, once per step: the chosen tokens feed the Python histories, the
        # streamed text and the stopping decision
        for r, c in zip(live_rows, choice.tolist()):             # plain ints: no per-row tensor ops
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
    final = scores.tolist()                                  # one transfer for every row's score
    results = [Generation(tokens[r], reasons[r], final[r], final[r] / max(1, len(tokens[r]) + (reasons[r] == "eos")))
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
        return beam_search(model, input_ids, segment_ids, attention_mask, config, eos_token_id, mask_mode,
                           target_segment_id, use_cache)
    *_, result = stream_generate(model, input_ids, segment_ids, attention_mask, config, eos_token_id=eos_token_id,
                                 mask_mode=mask_mode, target_segment_id=target_segment_id, use_cache=use_cache,
                                 seeds=seeds)
    return result
