"""The logits-processor chain against transformers' processors of the same names, alone and inside
every decoding strategy (greedy, sampling, beam search, each against a reference decoder written
here that recomputes the model from scratch and calls transformers' processors), and beam search
with a repetition penalty against an exhaustive search over every hypothesis."""

import itertools

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinLengthLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from components.decoding import DecodingConfig, History, build_chain, generate
from components.decoding import processors as ours
from components.model import Transformer
from tests.conftest import tiny_config

EOS = 3
SOURCES = [[2, 10, 11, 12, 3], [2, 20, 21, 3], [2, 30, 3]]
SETTINGS = {                                  # one processor each, strong enough to change outputs
    "repetition_penalty": {"repetition_penalty": 3.0},
    "no_repeat_ngram": {"no_repeat_ngram_size": 2},
    "min_length": {"min_new_tokens": 4},
    "temperature": {"temperature": 0.5},
    "top_k": {"top_k": 3},
    "top_p": {"top_p": 0.6},
}
WARPERS = ("temperature", "top_k", "top_p")


def hf_chain(cfg: DecodingConfig) -> LogitsProcessorList:
    """transformers' processors for these settings, in the order its generate() builds them;
    the warpers only when sampling (its greedy and beam search leave them out)."""
    procs = LogitsProcessorList()
    if cfg.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty))
    if cfg.no_repeat_ngram_size:
        procs.append(NoRepeatNGramLogitsProcessor(cfg.no_repeat_ngram_size))
    if cfg.min_new_tokens:
        procs.append(MinLengthLogitsProcessor(cfg.min_new_tokens, EOS))    # input_ids = the new tokens
    if cfg.strategy == "sample":
        if cfg.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(cfg.temperature))
        if cfg.top_k is not None:
            procs.append(TopKLogitsWarper(cfg.top_k))
        if cfg.top_p is not None:
            procs.append(TopPLogitsWarper(cfg.top_p))
    return procs


def hf_process(procs, tokens: list[int], scores: torch.Tensor) -> torch.Tensor:
    return procs(torch.tensor([tokens], dtype=torch.long).view(1, -1), scores.clone())


# --- each processor on the same scores -------------------------------------------------------------
def _scores_and_history(seed, N=6, V=50, t=7):
    g = torch.Generator().manual_seed(seed)
    scores = torch.log_softmax(torch.randn(N, V, generator=g) * 2, -1)
    tokens = torch.randint(0, 8, (N, t), generator=g)                  # few ids: repeats and n-grams
    return scores, tokens.masked_fill(tokens == EOS, 8)                # a history never holds EOS


@pytest.mark.parametrize("seed", range(5))
def test_each_processor_equals_transformers_on_the_same_scores(seed):
    scores, tokens = _scores_and_history(seed)
    for t in range(tokens.shape[1] + 1):
        ids = tokens[:, :t]
        history = History(ids.tolist(), t + 1)
        pairs = [(ours.RepetitionPenaltyLogitsProcessor(1.7), RepetitionPenaltyLogitsProcessor(1.7)),
                 (ours.RepetitionPenaltyLogitsProcessor(0.6), RepetitionPenaltyLogitsProcessor(0.6)),
                 (ours.TemperatureLogitsWarper(0.7), TemperatureLogitsWarper(0.7)),
                 (ours.TopKLogitsWarper(5), TopKLogitsWarper(5)),
                 (ours.TopPLogitsWarper(0.8), TopPLogitsWarper(0.8))]
        pairs += [(ours.NoRepeatNGramLogitsProcessor(n), NoRepeatNGramLogitsProcessor(n)) for n in (1, 2, 3)]
        pairs += [(ours.MinLengthLogitsProcessor(m, EOS), MinLengthLogitsProcessor(m, EOS)) for m in (2, 5)]
        for mine, theirs in pairs:
            assert torch.equal(mine(scores, history), theirs(ids, scores.clone())), (type(mine).__name__, t)
    # Raw logits of both signs (the penalty divides positive ones).
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(seed)) * 3
    assert torch.equal(ours.RepetitionPenaltyLogitsProcessor(1.7)(logits, History(tokens.tolist(), 8)),
                       RepetitionPenaltyLogitsProcessor(1.7)(tokens, logits.clone()))


def test_the_whole_chain_equals_transformers_list_in_its_order():
    scores, tokens = _scores_and_history(11, t=5)
    cfg = DecodingConfig(strategy="sample", repetition_penalty=1.4, no_repeat_ngram_size=2, min_new_tokens=7,
                         temperature=0.8, top_k=9, top_p=0.7)
    chain = build_chain(cfg, EOS)
    assert [type(p).__name__ for p in chain] == [type(p).__name__ for p in hf_chain(cfg)]
    assert torch.equal(chain(scores, History(tokens.tolist(), 6)), hf_chain(cfg)(tokens, scores.clone()))
    # Greedy and beam search get the same processors without the sampling warpers.
    for strategy in ("greedy", "beam"):
        chain = build_chain(DecodingConfig(**{**cfg.__dict__, "strategy": strategy}), EOS)
        assert [type(p).__name__ for p in chain] == ["RepetitionPenaltyLogitsProcessor",
                                                     "NoRepeatNGramLogitsProcessor", "MinLengthLogitsProcessor"]
    # Consistent top-k / nucleus: the same, except that EOS keeps its score.
    consistent = build_chain(DecodingConfig(**{**cfg.__dict__, "consistent": True}), EOS)
    got, want = consistent(scores, History(tokens.tolist(), 8)), hf_chain(cfg)(tokens, scores.clone())
    assert torch.equal(got[:, :EOS], want[:, :EOS]) and torch.equal(got[:, EOS + 1:], want[:, EOS + 1:])
    assert torch.isfinite(got[:, EOS]).all() and not torch.isfinite(want[:, EOS]).all()


def test_history_pads_rows_of_different_lengths():
    history = History([[5, 5, 1], [], [0]], 4)
    assert history.ids.tolist() == [[5, 5, 1], [-1, -1, -1], [0, -1, -1]]
    out = ours.RepetitionPenaltyLogitsProcessor(2.0)(-torch.ones(3, 6), history)
    assert out.tolist() == [[-1, -2, -1, -1, -1, -2], [-1] * 6, [-2, -1, -1, -1, -1, -1]]


# --- each processor inside each strategy -----------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(2)
    m = Transformer(tiny_config(40, initializer_range=0.5)).eval()
    with torch.no_grad():
        m.mlm_bias[EOS] += 2.0                     # EOS comes early sometimes: the minimum length matters
    return m


def batch(sources=SOURCES):
    T = max(map(len, sources))
    ids = torch.zeros(len(sources), T, dtype=torch.long)
    for i, s in enumerate(sources):
        ids[i, :len(s)] = torch.tensor(s)
    return ids, torch.zeros_like(ids), (ids > 0).long()


@torch.no_grad()
def next_log_probs(model, src, tokens):
    """The model's next-token log-probabilities, recomputed from scratch (no cache)."""
    seq = torch.tensor([src + tokens])
    seg = torch.tensor([[0] * len(src) + [1] * len(tokens)])
    return torch.log_softmax(model(seq, seg, mask_mode="unilm").logits[0, -1].float(), -1)[None]


def ref_greedy(model, src, cfg):
    procs, tokens = hf_chain(cfg), []
    for _ in range(cfg.max_new_tokens):
        tok = int(hf_process(procs, tokens, next_log_probs(model, src, tokens)).argmax())
        if tok == EOS:
            return [(tokens, "eos")]
        tokens.append(tok)
    return [(tokens, "length")]


def ref_sample(model, src, cfg, seed):
    """n samples of one input: each step draws one uniform number per sample from the input's own
    stream, and the token is the first whose cumulative probability exceeds u × total."""
    procs, n = hf_chain(cfg), cfg.num_return_sequences
    g = torch.Generator().manual_seed(seed)
    rows, reasons = [[] for _ in range(n)], ["length"] * n
    alive = [True] * n
    for _ in range(cfg.max_new_tokens):
        if not any(alive):
            break
        u = torch.rand(n, generator=g).tolist()
        for r in range(n):
            if not alive[r]:
                continue
            probs = hf_process(procs, rows[r], next_log_probs(model, src, rows[r]))[0].softmax(-1).tolist()
            target = u[r] * sum(probs)
            tok = next(j for j, c in enumerate(itertools.accumulate(probs)) if c > target)
            if tok == EOS:
                alive[r], reasons[r] = False, "eos"
            else:
                rows[r].append(tok)
    return list(zip(rows, reasons))


def ref_beam(model, src, cfg):
    """Plain beam search over lists: candidates ranked by processed sums, EOS candidates finish
    until W live continuations are found; finished hypotheses by sum / length ** length_penalty."""
    procs, W = hf_chain(cfg), cfg.num_beams
    beams, finished = [([], 0.0, 0.0)], []
    for _ in range(cfg.max_new_tokens):
        cands = []
        for tokens, s, r in beams:
            lp = next_log_probs(model, src, tokens)
            pp = hf_process(procs, tokens, lp)[0]
            cands += [(s + float(pp[v]), r + float(lp[0, v]), tokens, v) for v in range(lp.shape[-1])]
        cands.sort(key=lambda c: -c[0])
        new = []
        for s, r, tokens, v in cands[:2 * W]:
            if s == float("-inf") or len(new) == W:
                break
            if v == EOS:
                finished.append((tokens, "eos", r, s / (len(tokens) + 1) ** cfg.length_penalty))
            else:
                new.append((tokens + [v], s, r))
        if len(finished) >= W or not new:
            beams = []
            break
        beams = new
    finished += [(t, "length", r, s / max(1, len(t)) ** cfg.length_penalty) for t, s, r in beams]
    return sorted(finished, key=lambda f: -f[3])[:cfg.num_return_sequences]


def decode(model, cfg, seeds):
    return generate(model, *batch(), cfg, eos_token_id=EOS, seeds=seeds if cfg.strategy == "sample" else None)


@pytest.mark.parametrize("strategy", ["greedy", "sample", "beam"])
@pytest.mark.parametrize("name", list(SETTINGS))
def test_each_processor_in_each_strategy_equals_a_decoder_with_transformers_processors(model, name, strategy):
    common = {"greedy": {}, "sample": {"num_return_sequences": 3}, "beam": {"num_beams": 3,
                                                                            "num_return_sequences": 2}}[strategy]
    steps = 6 if strategy == "beam" else 8
    cfg = DecodingConfig(strategy=strategy, max_new_tokens=steps, **common, **SETTINGS[name])
    plain = DecodingConfig(strategy=strategy, max_new_tokens=steps, **common)
    seeds = [7, 8, 9]
    got = decode(model, cfg, seeds)
    for i, src in enumerate(SOURCES):
        if strategy == "greedy":
            want = ref_greedy(model, src, cfg)
        elif strategy == "sample":
            want = ref_sample(model, src, cfg, seeds[i])
        else:
            want = ref_beam(model, src, cfg)
            assert [g.normalized_score for g in got[i]] == pytest.approx([w[3] for w in want], abs=1e-4)
            assert [g.score for g in got[i]] == pytest.approx([w[2] for w in want], abs=1e-4)
        assert [(g.token_ids, g.finish_reason) for g in got[i]] == [(w[0], w[1]) for w in want], i
    unchanged = decode(model, plain, seeds) == got
    # The sampling warpers leave greedy's argmax and beam search's ranking alone; every other
    # pairing changes what this model generates (so the comparison above is not vacuous).
    assert unchanged == (name in WARPERS and strategy != "sample")


def test_all_processors_together_in_sampling_and_beam_search(model):
    every = {k: v for s in SETTINGS.values() for k, v in s.items()}
    for strategy, extra in (("sample", {"num_return_sequences": 4}), ("beam", {"num_beams": 4})):
        cfg = DecodingConfig(strategy=strategy, max_new_tokens=7, **extra, **{**every, "top_k": 6, "top_p": 0.8})
        got = decode(model, cfg, [3, 4, 5])
        for i, src in enumerate(SOURCES):
            want = ref_sample(model, src, cfg, 3 + i) if strategy == "sample" else ref_beam(model, src, cfg)
            assert [(g.token_ids, g.finish_reason) for g in got[i]] == [(w[0], w[1]) for w in want]


# --- beam search with a repetition penalty = exhaustive search ------------------------------------
def test_beam_search_with_a_repetition_penalty_equals_an_exhaustive_search():
    """Vocabulary {0, 1, 2, EOS=3}, 3 new tokens: 13 hypotheses end with EOS and 27 hit the cap.
    With 40 beams nothing is pruned, so beam search must return every hypothesis ranked by its
    penalised score sum / length ** length_penalty."""
    V, steps, W = 4, 3, 40
    torch.manual_seed(3)
    model = Transformer(tiny_config(V, initializer_range=0.5)).eval()
    src = [2, 0, 1, 3]
    penalty, alpha = 2.5, 0.8
    cfg = DecodingConfig(strategy="beam", max_new_tokens=steps, num_beams=W, num_return_sequences=W,
                         repetition_penalty=penalty, length_penalty=alpha)
    procs = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(penalty)])
    hypotheses = []
    for length in range(steps + 1):
        for tokens in itertools.product(range(3), repeat=length):
            ends = [EOS] if length < steps else [None]               # the cap: no room for EOS
            for end in ends:
                seq, score, logp = list(tokens) + ([end] if end is not None else []), 0.0, 0.0
                for t, v in enumerate(seq):
                    lp = next_log_probs(model, src, seq[:t])
                    score += float(hf_process(procs, seq[:t], lp)[0, v])
                    logp += float(lp[0, v])
                n = len(seq)
                hypotheses.append((list(tokens), "eos" if end is not None else "length", logp, score / n ** alpha))
    assert len(hypotheses) == 40 <= W
    hypotheses.sort(key=lambda h: -h[3])
    got = generate(model, torch.tensor([src]), torch.zeros(1, 4, dtype=torch.long), None, cfg, eos_token_id=EOS)[0]
    assert [(g.token_ids, g.finish_reason) for g in got] == [(h[0], h[1]) for h in hypotheses]
    assert [g.normalized_score for g in got] == pytest.approx([h[3] for h in hypotheses], abs=1e-5)
    assert [g.score for g in got] == pytest.approx([h[2] for h in hypotheses], abs=1e-5)
    # Without the penalty the ranking differs: beam search did apply it.
    plain = generate(model, torch.tensor([src]), None, None, DecodingConfig(**{**cfg.__dict__,
                                                                              "repetition_penalty": 1.0}),
                     eos_token_id=EOS)[0]
    assert [g.token_ids for g in plain] != [g.token_ids for g in got]
