"""The plain Generator behind /v1/similar, called directly: one batch of requests with different
settings and seeds, some of which the decoder rejects."""

import pytest

from serving.generator import Generator
from tests.tiny_training import GROUPS


def _same(a: list[dict], b: list[dict]) -> bool:
    return [c["text"] for c in a] == [c["text"] for c in b] and \
        [c["score"] for c in a] == pytest.approx([c["score"] for c in b], abs=1e-5)


def test_requests_with_different_seeds_share_a_batch_and_answer_as_alone(simbert_dir):
    gen = Generator(simbert_dir)
    items = [{"text": GROUPS[g][0], "n": 6, "k": 3, "decoding": {"max_new_tokens": 8, "seed": seed}}
             for g, seed in ((0, 1), (1, 2), (0, 3), (2, None))]
    calls = []
    original = gen.simbert.similar_many
    gen.simbert.similar_many = lambda *a, **kw: calls.append(kw["seeds"]) or original(*a, **kw)
    together = gen.similar_many(items)
    assert calls == [[1, 2, 3, None]]                              # one decode for the four requests
    for item, answer in zip(items[:3], together[:3]):
        assert _same(answer, gen.similar_many([item])[0])
    assert together[0] != together[2]                              # same text, other seed: other samples


def test_a_rejected_group_does_not_fail_the_rest_of_the_batch(simbert_dir):
    gen = Generator(simbert_dir)
    good = {"text": GROUPS[0][0], "n": 4, "k": 2, "decoding": {"max_new_tokens": 8, "seed": 0}}
    bad = {"text": GROUPS[1][0], "n": 4, "k": 2,
           "decoding": {"max_new_tokens": 8, "strategy": "beam", "num_beams": 2}}   # 4 beams asked of 2
    out = gen.similar_many([good, bad, good])
    assert out[1] == {"error": "num_return_sequences (4) cannot exceed num_beams (2)"}
    assert _same(out[0], out[2]) and 1 <= len(out[0]) <= 2
    assert _same(out[0], gen.similar_many([good])[0])              # the same answer as alone
