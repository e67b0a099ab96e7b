"""The plain Generator behind /v1/similar, called directly: one batch of requests with different
settings, some of which the decoder rejects."""

from serving.generator import Generator
from tests.tiny_training import GROUPS


def test_a_rejected_group_does_not_fail_the_rest_of_the_batch(simbert_dir):
    gen = Generator(simbert_dir)
    good = {"text": GROUPS[0][0], "n": 4, "k": 2, "decoding": {"max_new_tokens": 8, "seed": 0}}
    bad = {"text": GROUPS[1][0], "n": 4, "k": 2,
           "decoding": {"max_new_tokens": 8, "strategy": "beam", "num_beams": 2}}   # 4 beams asked of 2
    out = gen.similar_many([good, bad, good])
    assert out[1] == {"error": "num_return_sequences (4) cannot exceed num_beams (2)"}
    assert out[0] == out[2] and 1 <= len(out[0]) <= 2
    assert out[0] == gen.similar_many([good])[0]                  # the same answer as alone
