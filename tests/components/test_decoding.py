"""The batched, cached decoder against brute-force references that recompute everything."""

import math

import pytest
import torch

from components.decoding import (
    DecodingConfig,
    filter_logits,
    generate,
    non_termination_ratio,
    stream_generate,
    termination_log_probs,
    termination_nll,
)

EOS = 3
SOURCES = [[2, 10, 11, 12, 13, 3], [2, 20, 21, 3], [2, 30, 3]]


def batch(sources=SOURCES):
    T = max(map(len, sources))
    ids = torch.zeros(len(sources), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(sources):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, torch.zeros_like(ids), mask


def full_logits(model, seq, mode, prefix_len, seg_value):
    """Next-token log-probs by recomputing the whole sequence (no cache)."""
    seg = torch.tensor([[0] * prefix_len + [seg_value] * (len(seq) - prefix_len)])
    out = model(torch.tensor([seq]), seg, mask_mode=mode)
    return torch.log_softmax(out.logits[0, -1], -1)


def reference_greedy(model, src, mode, steps):
    seq, seg_value = list(src), 1 if mode == "unilm" else 0
    out = []
    for _ in range(steps):
        tok = int(full_logits(model, seq, mode, len(src), seg_value).argmax())
        if tok == EOS:
            return out, "eos"
        out.append(tok)
        seq.append(tok)
    return out, "length"


def reference_beam(model, src, mode, steps, W, alpha):
    """Plain beam search over Python lists, recomputing every sequence from scratch."""
    seg_value = 1 if mode == "unilm" else 0
    beams, finished = [([], 0.0)], []
    for _ in range(steps):
        cands = []
        for toks, score in beams:
            lp = full_logits(model, src + toks, mode, len(src), seg_value)
            for tok in range(lp.shape[0]):
                cands.append((score + float(lp[tok]), toks, tok))
        cands.sort(key=lambda c: -c[0])
        new = []
        for score, toks, tok in cands[:2 * W]:
            if tok == EOS:
                finished.append((toks, score / (len(toks) + 1) ** alpha, "eos"))
            elif len(new) < W:
                new.append((toks + [tok], score))
        if len(finished) >= W or not new:
            beams = []
            break
        beams = new
    finished += [(toks, s / max(1, len(toks)) ** alpha, "length") for toks, s in beams]
    return sorted(finished, key=lambda f: -f[1])


@pytest.mark.parametrize("attention", ["softmax", "linear"])
@pytest.mark.parametrize("mode", ["unilm", "causal"])
def test_greedy_and_beam_equal_brute_force_and_batching_changes_nothing(make_model, attention, mode):
    model = make_model(attention=attention, seed=2)
    ids, seg, mask = batch()
    kw = dict(eos_token_id=EOS, mask_mode=mode, target_segment_id=1 if mode == "unilm" else 0)
    greedy = generate(model, ids, seg, mask, DecodingConfig(strategy="greedy", max_new_tokens=6), **kw)
    beam_cfg = DecodingConfig(strategy="beam", num_beams=3, num_return_sequences=2, max_new_tokens=4,
                              length_penalty=1.0)
    beams = generate(model, ids, seg, mask, beam_cfg, **kw)
    for i, src in enumerate(SOURCES):
        with torch.no_grad():
            toks, reason = reference_greedy(model, src, mode, 6)
            ref_beams = reference_beam(model, src, mode, 4, 3, 1.0)
        assert greedy[i][0].token_ids == toks and greedy[i][0].finish_reason == reason
        assert [g.token_ids for g in beams[i]] == [b[0] for b in ref_beams[:2]]
        assert [g.normalized_score for g in beams[i]] == pytest.approx([b[1] for b in ref_beams[:2]], abs=1e-4)
        alone = generate(model, *batch([src]), DecodingConfig(strategy="greedy", max_new_tokens=6), **kw)
        assert alone[0][0].token_ids == greedy[i][0].token_ids
        alone_beam = generate(model, *batch([src]), beam_cfg, **kw)
        assert [g.token_ids for g in alone_beam[0]] == [g.token_ids for g in beams[i]]


def reference_top_k(logits, k):
    order = sorted(range(len(logits)), key=lambda j: (-logits[j], j))      # ties: lower id first
    return set(order[:k])


def reference_top_p(logits, p):
    probs = torch.tensor(logits).softmax(-1).tolist()
    order = sorted(range(len(logits)), key=lambda j: (-logits[j], j))
    kept, mass = set(), 0.0
    for j in order:
        kept.add(j)
        mass += probs[j]
        if mass >= p:                    # the token that crosses p is kept, then stop
            break
    return kept


@pytest.mark.parametrize("row", [
    [2.0, 1.0, 1.0, 1.0, 0.5, -1.0],     # ties around the cut
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],      # all tied
    [5.0, -2.0, 3.0, 3.0, 0.1, -9.0],
])
def test_top_k_and_top_p_follow_their_definitions_and_consistent_keeps_eos(row):
    logits = torch.tensor([row])
    for k in range(1, 7):
        kept = set(torch.isfinite(filter_logits(logits, k, None)[0]).nonzero().flatten().tolist())
        assert kept == reference_top_k(row, k)
    for p in (0.05, 0.3, 0.5, 0.7, 0.9, 0.999, 1.0):
        kept = set(torch.isfinite(filter_logits(logits, None, p)[0]).nonzero().flatten().tolist())
        assert kept == (reference_top_p(row, p) if p < 1.0 else set(range(6)))
    eos = 5                              # the least likely token: always filtered by plain top-k/top-p
    for k, p in ((1, None), (None, 0.05), (2, 0.5)):
        plain = filter_logits(logits, k, p, eos)
        consistent = filter_logits(logits, k, p, eos, consistent=True)
        assert plain[0, eos] == float("-inf") and consistent[0, eos] == logits[0, eos]


def test_self_terminating_head_always_stops_and_the_vanilla_head_does_not(make_model, tokenizer):
    sep = tokenizer.sep_id
    vanilla = make_model(seed=4, max_position_embeddings=400)
    with torch.no_grad():
        vanilla.mlm_bias[sep] = -30.0                       # EOS practically never wins under softmax
    st = make_model(seed=4, max_position_embeddings=400, termination="st", termination_epsilon=0.1, eos_token_id=sep)
    st.load_state_dict(vanilla.state_dict())
    ids, seg, mask = batch([[2, 10, 11, 3], [2, 40, 41, 42, 3], [2, 50, 3]])
    for strategy in ("greedy", "sample"):
        cfg = DecodingConfig(strategy=strategy, max_new_tokens=300, seed=0, num_return_sequences=1 if
                             strategy == "greedy" else 4)
        runaway = generate(vanilla, ids, seg, mask, cfg, eos_token_id=sep, mask_mode="unilm")
        stops = generate(st, ids, seg, mask, cfg, eos_token_id=sep, mask_mode="unilm")
        assert non_termination_ratio(runaway) == 1.0
        assert non_termination_ratio(stops) == 0.0
        assert max(len(g.token_ids) for row in stops for g in row) < 300


@pytest.mark.parametrize("kind", ["st", "nmst"])
def test_termination_probabilities_are_bounded_and_normalised(kind):
    torch.manual_seed(0)
    logits = torch.randn(5, 9) * 4
    state = torch.zeros(5)
    for t in range(1, 40):
        lp, state = termination_log_probs(logits + torch.randn(5, 9), 2, 0.1, kind, torch.full((5,), t), state)
        assert torch.allclose(lp.exp().sum(-1), torch.ones(5), atol=1e-5)
        assert torch.all(lp[:, 2].exp() >= 1 - 0.9 ** t - 1e-6)
    # The training loss is the mean NLL of the same probabilities.
    seq = torch.randn(2, 6, 9)
    targets = torch.randint(0, 9, (2, 6))
    mask = torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
    total, count = 0.0, 0
    for b in range(2):
        state = torch.zeros(1)
        step = 0
        for t in range(6):
            if mask[b, t]:
                step += 1
                lp, state = termination_log_probs(seq[b, t:t + 1], 2, 0.1, kind, torch.tensor([step]), state)
                total -= float(lp[0, targets[b, t]])
                count += 1
    assert float(termination_nll(seq, targets, mask, 2, 0.1, kind)) == pytest.approx(total / count, rel=1e-5)


def test_seeds_reproduce_and_differ(make_model):
    model = make_model(seed=1)
    ids, seg, mask = batch()
    cfg = DecodingConfig(strategy="sample", max_new_tokens=8, num_return_sequences=3, top_p=0.95, seed=123)
    a = generate(model, ids, seg, mask, cfg, eos_token_id=EOS)
    b = generate(model, ids, seg, mask, cfg, eos_token_id=EOS)
    c = generate(model, ids, seg, mask, DecodingConfig(**{**cfg.__dict__, "seed": 124}), eos_token_id=EOS)
    tokens = lambda r: [[g.token_ids for g in row] for row in r]   # noqa: E731
    assert tokens(a) == tokens(b) and tokens(a) != tokens(c)
    # Streaming yields the same tokens step by step.
    events = list(stream_generate(model, ids, seg, mask, cfg, eos_token_id=EOS))
    streamed = [[] for _ in range(9)]
    for step in events[:-1]:
        for row, tok in step:
            streamed[row].append(tok)
    assert streamed == [g.token_ids for row in a for g in row] and tokens(events[-1]) == tokens(a)


@pytest.mark.parametrize("settings", [{"top_k": 5}, {"top_p": 0.9}, {"top_k": 8, "top_p": 0.8, "consistent": True},
                                      {}])
def test_seeded_samples_of_an_input_do_not_depend_on_its_batch(make_model, settings):
    """A server batches requests together: with a seed, each input's samples are those it gets alone."""
    model = make_model(seed=5)
    cfg = DecodingConfig(strategy="sample", max_new_tokens=10, num_return_sequences=4, seed=7, **settings)
    together = generate(model, *batch(), cfg, eos_token_id=EOS)
    for i, src in enumerate(SOURCES):
        alone = generate(model, *batch([src]), cfg, eos_token_id=EOS)
        assert [g.token_ids for g in alone[0]] == [g.token_ids for g in together[i]]
        assert [g.score for g in alone[0]] == pytest.approx([g.score for g in together[i]], abs=1e-4)
    assert len({tuple(g.token_ids) for row in together for g in row}) > len(SOURCES)   # samples, not copies
    # One seed per input (requests of different clients batched together).
    seeds = [7 + i for i in range(len(SOURCES))]
    mixed = generate(model, *batch(), DecodingConfig(**{**cfg.__dict__, "seed": None}), eos_token_id=EOS,
                     seeds=seeds)
    for i, src in enumerate(SOURCES):
        alone = generate(model, *batch([src]), DecodingConfig(**{**cfg.__dict__, "seed": seeds[i]}), eos_token_id=EOS)
        assert [g.token_ids for g in alone[0]] == [g.token_ids for g in mixed[i]]
    with pytest.raises(ValueError, match="seeds has 1 entries for 3 inputs"):
        generate(model, *batch(), cfg, eos_token_id=EOS, seeds=[1])
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63\), got -1"):
        generate(model, *batch(), cfg, eos_token_id=EOS, seeds=[1, -1, 2])


def test_unseeded_sampling_leaves_the_global_generator_alone(make_model):
    model = make_model(seed=5)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    generate(model, *batch(), DecodingConfig(strategy="sample", max_new_tokens=4), eos_token_id=EOS)
    assert torch.equal(torch.rand(3), expected)


def test_inverse_cdf_pick_follows_the_distribution():
    from components.decoding.decode import _pick
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2]])
    u = torch.rand(40_000, generator=torch.Generator().manual_seed(0))
    picks = _pick(probs.expand(len(u), -1), u).squeeze(1)
    freq = torch.bincount(picks, minlength=5).float() / len(u)
    assert freq[0] == 0 and freq[2] == 0                               # probability 0: never picked
    assert torch.allclose(freq, probs[0], atol=0.01)
    assert _pick(probs, torch.tensor([0.0])).item() == 1 and _pick(probs, torch.tensor([0.9999])).item() == 4


def test_min_tokens_repetition_and_ngram_controls(make_model):
    model = make_model(seed=3)
    ids, seg, mask = batch()
    out = generate(model, ids, seg, mask, DecodingConfig(strategy="greedy", max_new_tokens=12, min_new_tokens=12,
                                                          no_repeat_ngram_size=1), eos_token_id=EOS)
    for row in out:
        toks = row[0].token_ids
        assert len(toks) == 12 and len(set(toks)) == 12          # no token twice, no early EOS
    lp = generate(model, ids, seg, mask, DecodingConfig(strategy="greedy", max_new_tokens=3), eos_token_id=EOS)
    assert all(math.isfinite(r[0].score) for r in lp)


@pytest.mark.parametrize("settings,message", [
    ({"top_p": 1.5}, "top_p must be in"),
    ({"top_p": 0.0}, "top_p must be in"),
    ({"temperature": -1.0}, "temperature must be > 0"),
    ({"strategy": "beam", "num_beams": 0}, "num_beams must be an integer >= 1"),
    ({"strategy": "nucleus"}, "strategy must be one of"),
    ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
    ({"topp": 0.9}, "did you mean 'top_p'"),
    ({"seed": 2**64}, "seed must be an integer in"),
])
def test_bad_settings_fail_before_any_compute(settings, message):
    with pytest.raises(ValueError, match=message):
        DecodingConfig.from_dict(settings)


def test_too_many_new_tokens_for_the_positions(make_model):
    model = make_model()
    ids, seg, mask = batch()
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings=128"):
        generate(model, ids, seg, mask, DecodingConfig(max_new_tokens=125), eos_token_id=EOS)


def test_causal_generation_continues_the_prompts_last_segment(make_model):
    """Without a target segment, causal mode continues each prompt's last segment id (a plain LM
    sees the segment ids it was trained with); unilm mode keeps UniLM's target segment 1."""
    model = make_model(seed=6)
    ids, _, mask = batch()
    seg = torch.zeros_like(ids)
    seg[1, 2:4] = 1                                             # second prompt ends in segment 1
    cfg = DecodingConfig(strategy="greedy", max_new_tokens=5)
    out = generate(model, ids, seg, mask, cfg, eos_token_id=EOS, mask_mode="causal")
    for i, src in enumerate(SOURCES):
        last = int(seg[i, len(src) - 1])
        seq, want = list(src), []
        with torch.no_grad():
            for _ in range(5):
                full_seg = torch.tensor([seg[i, :len(src)].tolist() + [last] * (len(seq) - len(src))])
                tok = int(model(torch.tensor([seq]), full_seg, mask_mode="causal").logits[0, -1].argmax())
                if tok == EOS:
                    break
                want.append(tok)
                seq.append(tok)
        assert out[i][0].token_ids == want
    assert generate(model, ids, seg, mask, cfg, eos_token_id=EOS, mask_mode="causal",
                    target_segment_id=torch.tensor([0, 1, 0])) == out
    assert generate(model, ids, seg, mask, cfg, eos_token_id=EOS, mask_mode="causal",
                    target_segment_id=1) != out                  # the old default: segment 1 everywhere
    unilm = generate(model, ids, seg, mask, cfg, eos_token_id=EOS, mask_mode="unilm")
    assert unilm == generate(model, ids, seg, mask, cfg, eos_token_id=EOS, mask_mode="unilm", target_segment_id=1)
