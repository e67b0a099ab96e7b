"""Perturbed Masking impact matrices: the batched computation equals a naive per-pair one (one
forward pass per masked copy), for every distance and subword merge, across sentences and layers."""

import numpy as np
import pytest
import torch

from components.probing.impact import (
    ImpactOptions,
    encode_units,
    hidden_states_at,
    impact_matrices,
    impact_matrix,
    pack_batches,
)

# Multi-token units (play ##ing, test ##ed, play ##er ##s) so that first / avg / max differ.
SENTENCES = [
    list("我在银行修改密码"),
    ["hello", "world", "playing", "bert", "tested", "players"],
    list("怎么办"),
    ["ray", "players", "test"],
    list("你好"),
    ["好"],
]


@pytest.fixture(scope="module")
def model(tokenizer):
    from components.model import Transformer
    from tests.conftest import tiny_config
    torch.manual_seed(0)
    # A wide initialisation: the tiny model's states then differ clearly between masked copies.
    return Transformer(tiny_config(tokenizer.vocab_size, initializer_range=0.3)).eval()


_STATES: dict = {}


def naive(model, tokenizer, units, layer=-1, distance="euclidean", subword="first"):
    """F[i][j] with one forward pass per masked copy, batch size 1: the definition, nothing shared.
    (The forward passes are cached per model and masked copy, as every option reads the same ones.)"""
    e = encode_units(tokenizer, units)
    L = model.config.num_hidden_layers
    li = layer if layer > 0 else L + 1 + layer

    def states(masked):
        key = (id(model), tuple(e.ids), masked)
        if key not in _STATES:
            ids = list(e.ids)
            for u in masked:
                for p in range(*e.spans[u]):
                    ids[p] = tokenizer.mask_id
            with torch.no_grad():
                _STATES[key] = model(torch.tensor([ids]), return_logits=False).hidden_states
        return _STATES[key][li][0]                                                    # (T, H)

    F = np.zeros((e.n, e.n))
    for i in range(e.n):
        hi = states((i,))
        pos = [e.spans[i][0]] if subword == "first" else list(range(*e.spans[i]))
        for j in range(e.n):
            if i == j:
                continue
            hij = states((min(i, j), max(i, j)))
            if distance == "euclidean":
                d = [float(torch.linalg.vector_norm(hi[p] - hij[p])) for p in pos]
            else:
                d = [1.0 - float(torch.nn.functional.cosine_similarity(hi[p], hij[p], dim=0)) for p in pos]
            F[i, j] = max(d) if subword == "max" else sum(d) / len(d)
    return F


@pytest.mark.parametrize("subword", ["first", "avg", "max"])
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_batched_equals_naive_per_pair(model, tokenizer, distance, subword):
    # A small budget mixes lengths in a batch (padding + attention mask) and splits sentences.
    want = [naive(model, tokenizer, units, distance=distance, subword=subword) for units in SENTENCES]
    for budget in (40, 100_000):
        got = impact_matrices(model, tokenizer, SENTENCES,
                              ImpactOptions(distance=distance, subword=subword, token_budget=budget))
        for F, W in zip(got, want):
            assert F.shape == W.shape
            np.testing.assert_allclose(F, W, atol=1e-5, rtol=0)
    assert np.abs(got[0]).max() > 0.1              # the matrices are not trivially zero


def test_subword_merges_differ_on_multi_token_words(model, tokenizer):
    units = SENTENCES[1]
    mats = {m: impact_matrix(model, tokenizer, units, ImpactOptions(subword=m)) for m in ("first", "avg", "max")}
    row = units.index("players")                    # play ##er ##s
    assert not np.allclose(mats["first"][row], mats["avg"][row])
    assert (mats["max"][row] >= mats["avg"][row] - 1e-6).all()
    single = units.index("hello")                   # one token: every merge is the same
    np.testing.assert_allclose(mats["first"][single], mats["max"][single], atol=1e-6)


def test_cosine_is_a_distance(model, tokenizer):
    F = impact_matrix(model, tokenizer, SENTENCES[0], ImpactOptions(distance="cosine"))
    assert (F >= -1e-6).all() and (F <= 2 + 1e-6).all()
    assert np.allclose(np.diag(F), 0)


def test_every_layer_and_chosen_layers(model, tokenizer):
    all_layers = impact_matrix(model, tokenizer, SENTENCES[0], ImpactOptions(layer="all"))
    assert all_layers.shape == (2, 8, 8)
    for layer, k in ((1, 0), (2, 1), (-1, 1), (-2, 0)):
        one = impact_matrix(model, tokenizer, SENTENCES[0], ImpactOptions(layer=layer))
        np.testing.assert_allclose(one, all_layers[k], atol=1e-5)
    np.testing.assert_allclose(all_layers[0], naive(model, tokenizer, SENTENCES[0], layer=1), atol=1e-5)


def test_many_sentences_equal_one_at_a_time(model, tokenizer):
    """Packing copies of many sentences into shared batches changes nothing (float64: exactly up to
    rounding; float32: within 1e-5)."""
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        m = model.to(dtype)
        together = impact_matrices(m, tokenizer, SENTENCES, ImpactOptions(token_budget=256))
        for units, F in zip(SENTENCES, together):
            np.testing.assert_allclose(F, impact_matrix(m, tokenizer, units), atol=tol, rtol=0)
    model.float()


def test_adjacent_pairs_only(model, tokenizer):
    full = impact_matrix(model, tokenizer, SENTENCES[0])
    band = impact_matrix(model, tokenizer, SENTENCES[0], ImpactOptions(pairs="adjacent"))
    n = len(SENTENCES[0])
    for i in range(n):
        for j in range(n):
            if abs(i - j) <= 1:
                assert band[i, j] == pytest.approx(full[i, j], abs=1e-5)
            else:
                assert np.isnan(band[i, j])


def test_linear_attention_model(tokenizer):
    from components.model import Transformer
    from tests.conftest import tiny_config
    torch.manual_seed(1)
    m = Transformer(tiny_config(tokenizer.vocab_size, attention="linear", initializer_range=0.3)).eval()
    got = impact_matrices(m, tokenizer, SENTENCES[:3], ImpactOptions(token_budget=64))
    for units, F in zip(SENTENCES[:3], got):
        np.testing.assert_allclose(F, naive(m, tokenizer, units), atol=1e-5)


@pytest.mark.parametrize("options, message", [
    (ImpactOptions(distance="manhattan"), "unknown distance 'manhattan'"),
    (ImpactOptions(subword="sum"), "unknown subword merge 'sum'"),
    (ImpactOptions(pairs="diagonal"), "unknown pairs mode"),
    (ImpactOptions(layer=0), "layer 0"),
    (ImpactOptions(layer=3), "has 2 layers"),
    (ImpactOptions(layer=-3), "has 2 layers"),
    (ImpactOptions(layer="last"), "layer must be"),
    (ImpactOptions(token_budget=0), "token_budget"),
])
def test_bad_options_are_errors(model, tokenizer, options, message):
    with pytest.raises(ValueError, match=message):
        impact_matrices(model, tokenizer, SENTENCES[:1], options)


def test_bad_inputs_are_errors(model, tokenizer):
    with pytest.raises(ValueError, match="at most"):
        impact_matrices(model, tokenizer, [list("好" * 200)])
    with pytest.raises(TypeError):
        encode_units(tokenizer, "我在银行")
    with pytest.raises(ValueError, match="non-empty"):
        encode_units(tokenizer, ["我", ""])
    model.train()
    try:
        with pytest.raises(ValueError, match="training mode"):
            impact_matrices(model, tokenizer, SENTENCES[:1])
    finally:
        model.eval()


def test_units_that_tokenize_to_nothing_become_unk(tokenizer):
    e = encode_units(tokenizer, ["好", "\u200b", "人"])
    assert e.ids[e.spans[1][0]] == tokenizer.unk_id and len(e.spans) == 3


def test_pack_batches_respects_the_budget():
    lengths = [5, 9, 9, 3, 9, 5, 30]
    batches = pack_batches(lengths, token_budget=20)
    assert sorted(k for b in batches for k in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[k] for k in b) <= 20
    assert [lengths[b[0]] for b in batches] == sorted((lengths[b[0]] for b in batches), reverse=True)


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_hidden_states_at_equals_the_full_forward(tokenizer, attention):
    """Stopping at the highest requested layer and computing its block at the read positions only
    gives the same states as the model's own forward pass (padding included)."""
    from components.model import Transformer
    from tests.conftest import tiny_config
    torch.manual_seed(3)
    m = Transformer(tiny_config(tokenizer.vocab_size, num_hidden_layers=3, attention=attention,
                                initializer_range=0.3)).eval()
    ids = torch.randint(5, tokenizer.vocab_size, (4, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:], mask[3, 4:] = 0, 0
    qpos = torch.tensor([[1, 8], [5, 0], [2, 2], [3, 1]])
    with torch.no_grad():
        full = m(ids, attention_mask=mask, return_logits=False).hidden_states
        for layers in ([1], [2], [3], [1, 3], [0, 1, 2, 3]):
            got = hidden_states_at(m, ids, mask, layers, qpos)                    # (B, Q, nL, H)
            for k, li in enumerate(layers):
                want = torch.stack([full[li][b, qpos[b]] for b in range(4)])      # (B, Q, H)
                torch.testing.assert_close(got[:, :, k], want, atol=1e-5, rtol=0)
