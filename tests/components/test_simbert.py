"""SimBERT's generation and retrieval API on a tiny model trained in-process."""

import numpy as np
import pytest
import torch

from components.simbert import SimBERT
from tests.tiny_training import GROUPS, train_tiny_simbert


@pytest.fixture(scope="module")
def sim(tmp_path_factory, vocab_file):
    return SimBERT.from_pretrained(train_tiny_simbert(tmp_path_factory.mktemp("sim") / "m", vocab_file, steps=60))


def test_retrieval_vector_is_the_same_alone_and_as_the_source_of_a_pair(sim):
    tok = sim.tokenizer
    for a, b in [GROUPS[0][:2], GROUPS[3][1:]]:
        alone = torch.from_numpy(sim.encode([a]))[0]
        pair = tok.encode_batch([a], pairs=[b])
        with torch.no_grad():
            pooled = sim.model(pair.input_ids, pair.segment_ids, pair.attention_mask, mask_mode="unilm").pooled[0]
        assert torch.allclose(alone, torch.nn.functional.normalize(pooled, dim=-1), atol=1e-6)


def test_encode_is_normalised_and_independent_of_batching(sim):
    texts = [t for g in GROUPS for t in g]
    together = sim.encode(texts, batch_size=7)
    one_by_one = np.concatenate([sim.encode([t]) for t in texts])
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert np.allclose(together, one_by_one, atol=1e-5)
    with pytest.raises(TypeError):
        sim.encode("not a list")


def test_the_model_has_learnt_its_groups(sim):
    texts = [t for g in GROUPS for t in g]
    v = sim.encode(texts)
    s = v @ v.T
    np.fill_diagonal(s, -np.inf)
    group = np.repeat(np.arange(len(GROUPS)), 3)
    assert (group[s.argmax(1)] == group).mean() >= 0.9


@pytest.mark.parametrize("text", [GROUPS[0][0], GROUPS[4][2], "今天想吃什么"])
def test_similar_with_32_candidates(sim, text):
    out = sim.similar(text, n=32, k=5, decoding={"seed": 3})
    texts = [t for t, _ in out]
    assert 1 <= len(out) <= 5
    assert text not in texts and len(set(texts)) == len(texts) and all(t.strip() for t in texts)
    scores = [s for _, s in out]
    assert scores == sorted(scores, reverse=True)
    # The scores are the cosines of the candidates to the input.
    v = sim.encode([text, *texts])
    assert np.allclose(v[1:] @ v[0], scores, atol=1e-5)


def test_generate_draws_n_samples_per_source_in_one_call(sim):
    rows = sim.generate([GROUPS[0][0], GROUPS[1][0]], n=6, decoding={"seed": 0, "top_k": 5})
    assert [len(r) for r in rows] == [6, 6]
    again = sim.generate([GROUPS[0][0], GROUPS[1][0]], n=6, decoding={"seed": 0, "top_k": 5})
    assert rows == again
    many = sim.similar_many([GROUPS[0][0], GROUPS[1][0]], n=6, k=3, decoding={"seed": 0})
    assert len(many) == 2 and all(1 <= len(m) <= 3 for m in many)
    assert GROUPS[0][0] not in [t for t, _ in many[0]] and GROUPS[1][0] not in [t for t, _ in many[1]]
