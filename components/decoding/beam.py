"""Beam search over the shared Transformer, through the same logits-processor chain as greedy
decoding and sampling (repetition penalty, n-gram bans, minimum length)."""

from __future__ import annotations

import torch

from components.decoding.processors import History, build_chain
from components.decoding.steps import Generation, Stepper, log_probs, prepare

NEG_INF = float("-inf")


class _Beams:
    """The W beams of every input: tokens, processed-score sums (the ranking) and the model's own
    log-probability sums (reported as Generation.score), and the finished hypotheses. The sums
    are kept on the host in float64 on purpose: choosing among 2W candidates per input is Python
    bookkeeping, and each step moves only (inputs, 2W) candidates off the model's device."""

    def __init__(self, B: int, W: int, length_penalty: float):
        self.W, self.length_penalty = W, length_penalty
        self.scores = torch.full((B, W), NEG_INF, dtype=torch.float64, device="cpu")
        self.scores[:, 0] = 0.0                      # all beams start equal: expand one of them
        self.logps = torch.zeros((B, W), dtype=torch.float64, device="cpu")
        self.tokens: list[list[list[int]]] = [[[] for _ in range(W)] for _ in range(B)]
        self.finished: list[list[Generation]] = [[] for _ in range(B)]
        self.live = list(range(B))

    def norm(self, score: float, length: int) -> float:
        return score / max(1, length) ** self.length_penalty

    def histories(self) -> list[list[int]]:
        return [self.tokens[b][w] for b in self.live for w in range(self.W)]

    def step(self, scores: torch.Tensor, logp: torch.Tensor, eos_id: int) -> tuple[list[int], list[int]]:
        """scores / logp: (live inputs × W, V) processed and raw log-probabilities. Keeps each
        input's W best continuations among its 2W best candidates; returns the rows they extend
        and their tokens (inputs that are done drop out of `live`)."""
        A, W, V = len(self.live), self.W, scores.shape[-1]
        sums = self.scores[self.live].to(scores.device)
        total = sums.view(A, W, 1) + scores.double().view(A, W, V)
        cand_scores, cand_idx = torch.sort(total.view(A, W * V), dim=1, descending=True, stable=True)
        cand_scores, cand_idx = cand_scores[:, :2 * W], cand_idx[:, :2 * W]
        cand_raw = logp.double().view(A, W * V).gather(1, cand_idx)
        # to the host on purpose: three (A, 2W) tables, one transfer each per step
        cand_scores, cand_idx, cand_raw = cand_scores.tolist(), cand_idx.tolist(), cand_raw.tolist()
        rows, tokens, still = [], [], []
        for a, b in enumerate(self.live):
            new = self._select(b, cand_scores[a], cand_idx[a], cand_raw[a], V, eos_id)
            if new is None:
                continue
            still.append(b)
            rows += [a * W + w for w, _, _, _ in new]
            tokens += [tok for _, tok, _, _ in new]
            self.tokens[b] = [self.tokens[b][w] + [tok] for w, tok, _, _ in new]
            self.scores[b] = torch.tensor([s for _, _, s, _ in new], dtype=torch.float64, device="cpu")
            self.logps[b] = torch.tensor([r for _, _, _, r in new], dtype=torch.float64, device="cpu")
        self.live = still
        return rows, tokens

    def _select(self, b, cand_scores, cand_idx, cand_raw, V, eos_id):
        """Input b's next beams (w, token, processed sum, raw sum), best first; EOS candidates become
        finished hypotheses on the way. None when the input is done. cand_raw: each candidate's
        own log-probability."""
        new = []
        logps = self.logps[b].tolist()
        for s, idx, raw in zip(cand_scores, cand_idx, cand_raw):
            if s == NEG_INF:
                break
            w, tok = divmod(idx, V)
            r = logps[w] + raw
            if tok == eos_id:
                seq = self.tokens[b][w]
                self.finished[b].append(Generation(list(seq), "eos", r, self.norm(s, len(seq) + 1)))
                continue
            new.append((w, tok, s, r))
            if len(new) == self.W:
                break
        if len(self.finished[b]) >= self.W or not new:
            return None
        while len(new) < self.W:                     # too few live candidates: pad with dead beams
            new.append((new[0][0], new[0][1], NEG_INF, NEG_INF))
        return new

    def results(self, n: int) -> list[list[Generation]]:
        for b in self.live:                          # cap reached: live beams end as "length"
            for w in range(self.W):
                s = float(self.scores[b, w])
                if s > NEG_INF:
                    seq = self.tokens[b][w]
                    self.finished[b].append(Generation(list(seq), "length", float(self.logps[b, w]),
                                                       self.norm(s, len(seq))))
        return [sorted(f, key=lambda g: g.normalized_score, reverse=True)[:n] for f in self.finished]


@torch.no_grad()
def beam_search(model, input_ids, segment_ids, attention_mask, config, eos_token_id, mask_mode,
                target_segment_id, use_cache) -> list[list[Generation]]:
    """Standard beam search: each step keeps the W best continuations of every input by the sum of
    processed log-probabilities (the processor chain); a beam that emits EOS becomes a finished
    hypothesis ranked by that sum / length ** length_penalty (its `normalized_score`; `score` is the
    model's own log-probability sum); an input is done once it has W finished hypotheses (or at
    max_new_tokens, when live beams are finished as "length")."""
    input_ids, segment_ids, attention_mask, target = prepare(
        model, input_ids, segment_ids, attention_mask, config, eos_token_id, target_segment_id, mask_mode)
    model.eval()
    B, W = input_ids.shape[0], config.num_beams
    device = input_ids.device                                # prepare put it on the model's device
    stepper = Stepper(model, input_ids, segment_ids, attention_mask, mask_mode, use_cache)
    stepper.expand(W)
    beams = _Beams(B, W, config.length_penalty)
    chain = build_chain(config, eos_token_id)
    survival = torch.zeros(B * W, device=device)
    for t in range(1, config.max_new_tokens + 1):
        steps = torch.full((len(beams.live) * W,), t, device=device)
        logp, new_survival = log_probs(model, stepper.logits, eos_token_id, steps, survival)
        rows, tokens = beams.step(chain(logp, History(beams.histories(), t, device=device)), logp, eos_token_id)
        if not beams.live or t == config.max_new_tokens:
            break
        index = torch.tensor(rows, device=device)
        stepper.select(index)
        survival = new_survival[index]
        segments = target[torch.tensor(beams.live, device=device)].repeat_interleave(W)
        stepper.advance(torch.tensor(tokens, device=device), segments)
    return beams.results(config.num_return_sequences)
