"""Devices and dtypes follow the model, tested on the CPU (no GPU here):

(a) every inference path runs with the model in bfloat16 and agrees with float32 on what is
    comparable across dtypes (embeddings, class probabilities, teacher-forced log-probabilities,
    impact matrices, IG scores; never generated text, where one flipped argmax changes the rest);
(b) no path relies on torch's default device: each runs with the model on the CPU while the
    default device is "meta", where any tensor built without naming the model's device lands, and
    any computation mixing it with the model's tensors fails. Nothing here wraps the code under test
    in a device context; the result must equal the one without the meta default.

Tolerances. bfloat16 keeps 8 significant bits: one rounding is a relative error up to 2^-8 ≈ 0.4 %.
The tiny models here run 2 post-LN layers of width 32-48, where each matmul sums 32-64 rounded
products (errors add up as a random walk: a few roundings' worth) and every LayerNorm renormalises,
so the end-to-end relative error on normalised outputs stays within a few percent. Each bound below
is 3-6x what these models showed when the tests were written (noted at each), and still far below
what a wrong path gives (say, another text's vector: different texts' unit vectors here differ by
0.35 in some component, at cosine 0.48-0.67).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.attribution import Attributor, attribute_batch
from components.decoding import DecodingConfig, generate
from components.dialog import DialogueModel
from components.model import Transformer
from components.probing import ImpactOptions, impact_matrices
from components.probing.prober import Prober
from components.simbert import SimBERT
from components.tokenizer import Tokenizer

TEXTS = ["怎么修改银行卡密码", "今天天气怎么样", "hello world 我的快递还没到"]
HISTORIES = [["在吗", "在的，请问有什么可以帮您"], ["什么时候发货"], ["我想退款", "好的", "怎么申请退款"]]


def on_meta(fn):
    """fn() with torch's default device set to meta (nothing else changed), then restored."""
    torch.set_default_device("meta")
    try:
        return fn()
    finally:
        torch.set_default_device(None)


def same(a, b) -> bool:
    """Equal results, nested lists / tuples / arrays / dataclasses of numbers and strings."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if hasattr(a, "__dataclass_fields__"):
        return all(same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    return a == b


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    from tests.conftest import make_vocab
    return make_vocab(tmp_path_factory.mktemp("devices") / "vocab.txt")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, vocab):
    """A tiny model with every head (classifier included), saved once: initializer_range 0.3 so
    that outputs depend on the input (at 0.02 a random tiny model is ~constant, proving nothing)."""
    from tests.conftest import tiny_config
    torch.manual_seed(0)
    tok = Tokenizer(vocab)
    cfg = tiny_config(tok.vocab_size, num_labels=3, labels=["neg", "neu", "pos"], initializer_range=0.3)
    out = tmp_path_factory.mktemp("devices") / "model"
    Transformer(cfg).eval().save_pretrained(out, metadata={"vocab_file": str(vocab)})
    return out


@pytest.fixture(scope="module")
def simbert_dir(tmp_path_factory, vocab):
    """A SimBERT trained for a few steps (so its vectors and paraphrases mean something)."""
    from tests.tiny_training import train_tiny_simbert
    return train_tiny_simbert(tmp_path_factory.mktemp("devices") / "simbert", vocab, steps=30)


# --- loading ---------------------------------------------------------------------------------
def test_from_pretrained_places_and_types_the_weights(model_dir):
    m = Transformer.from_pretrained(model_dir, dtype="bfloat16")
    assert m.dtype == torch.bfloat16 and m.device == torch.device("cpu")
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())
    assert Transformer.from_pretrained(model_dir).dtype == torch.float32
    # loading itself does not depend on the default device either
    loaded = on_meta(lambda: Transformer.from_pretrained(model_dir, dtype=torch.bfloat16))
    assert loaded.device == torch.device("cpu")
    assert torch.equal(loaded.embeddings.word_embeddings.weight, m.embeddings.word_embeddings.weight)
    for wrapper in (lambda: SimBERT.from_pretrained(model_dir, dtype="bf16").model,
                    lambda: DialogueModel.from_pretrained(model_dir, dtype="bfloat16").model,
                    lambda: Attributor.from_pretrained(model_dir, dtype="bfloat16").model,
                    lambda: Prober.from_pretrained(model_dir, dtype="bfloat16", layer=-1).model):
        assert wrapper().dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        Transformer.from_pretrained(model_dir, dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            Transformer.from_pretrained(model_dir, device="cuda")


# --- SimBERT ---------------------------------------------------------------------------------
def test_simbert_encode_bfloat16_and_meta(simbert_dir):
    f32 = SimBERT.from_pretrained(simbert_dir)
    bf16 = SimBERT.from_pretrained(simbert_dir, dtype="bfloat16")
    want = f32.encode(TEXTS)
    got = bf16.encode(TEXTS)
    assert got.dtype == np.float32
    # unit vectors of width 48: observed max |Δ| = 0.0016, cosine 0.99999
    assert np.abs(got - want).max() < 0.01
    assert (got * want).sum(1).min() > 0.999
    assert np.array_equal(on_meta(lambda: f32.encode(TEXTS)), want)
    assert np.array_equal(on_meta(lambda: bf16.encode(TEXTS)), got)


@pytest.mark.parametrize("decoding", [
    {"strategy": "sample", "top_k": 5, "top_p": 0.9, "seed": 3, "repetition_penalty": 1.2,
     "no_repeat_ngram_size": 2, "min_new_tokens": 1, "consistent": True},
    {"strategy": "greedy"},
    {"strategy": "beam", "num_beams": 3, "repetition_penalty": 1.3},
])
def test_simbert_generation_on_meta_and_in_bfloat16(simbert_dir, decoding):
    for dtype in (None, "bfloat16"):
        sim = SimBERT.from_pretrained(simbert_dir, dtype=dtype)
        n = 3 if decoding["strategy"] != "greedy" else 1
        want = sim.generate(TEXTS, n, {**decoding, "max_new_tokens": 8})
        assert len(want) == len(TEXTS) and all(len(row) == n for row in want)
        assert on_meta(lambda sim=sim, n=n: sim.generate(TEXTS, n, {**decoding, "max_new_tokens": 8})) == want


def test_decoding_without_cache_and_seeds_on_meta(simbert_dir):
    sim = SimBERT.from_pretrained(simbert_dir, dtype="bfloat16")
    batch = sim.tokenizer.encode_batch(TEXTS, max_length=32, device=sim.model.device)
    config = DecodingConfig(strategy="sample", top_k=4, max_new_tokens=6, num_return_sequences=2)

    def run(use_cache):
        return generate(sim.model, batch.input_ids, batch.segment_ids, batch.attention_mask, config,
                        eos_token_id=sim.tokenizer.sep_id, use_cache=use_cache, seeds=[1, 2, 3])
    for use_cache in (True, False):
        want = run(use_cache)
        assert same(on_meta(lambda use_cache=use_cache: run(use_cache)), want)


def test_linear_attention_paths(tmp_path, vocab):
    """The O(n) kernel keeps its running sums in float32 and builds its masks on the inputs' device."""
    from tests.conftest import tiny_config
    torch.manual_seed(2)
    tok = Tokenizer(vocab)
    d = tmp_path / "linear"
    Transformer(tiny_config(tok.vocab_size, attention="linear", initializer_range=0.3)).eval().save_pretrained(
        d, metadata={"vocab_file": str(vocab)})
    decoding = {"strategy": "sample", "top_k": 5, "seed": 1, "max_new_tokens": 6}
    for dtype in (None, "bfloat16"):
        sim = SimBERT.from_pretrained(d, dtype=dtype)
        vectors, texts = sim.encode(TEXTS), sim.generate(TEXTS, 2, decoding)
        assert np.array_equal(on_meta(lambda sim=sim: sim.encode(TEXTS)), vectors)
        assert on_meta(lambda sim=sim: sim.generate(TEXTS, 2, decoding)) == texts


def test_similar_and_teacher_forced_logits(simbert_dir):
    f32 = SimBERT.from_pretrained(simbert_dir)
    bf16 = SimBERT.from_pretrained(simbert_dir, dtype="bfloat16")
    for sim in (f32, bf16):
        want = sim.similar_many(TEXTS[:2], n=6, k=3, decoding={"seed": 5, "max_new_tokens": 8})
        assert on_meta(lambda sim=sim: sim.similar_many(TEXTS[:2], n=6, k=3,
                                                        decoding={"seed": 5, "max_new_tokens": 8})) == want
    # Teacher-forced log-probabilities of a paraphrase pair: what a decoder's step sees.
    batch = f32.tokenizer.encode_batch(TEXTS[:2], pairs=["银行卡密码怎么改", "今天天气好吗"])

    def logp(sim):
        out = sim.model(batch.input_ids, batch.segment_ids, batch.attention_mask, mask_mode="unilm")
        return torch.log_softmax(out.logits.float(), -1)[batch.attention_mask.bool()]
    want, got = logp(f32), logp(bf16)
    probs_w, probs_g = want.exp(), got.exp()
    # observed max |Δp| = 0.0032 over every position and token, every argmax equal; a near-tie
    # may flip an argmax in principle, so 90 % of them must agree
    assert (probs_g - probs_w).abs().max() < 0.02
    assert (want.argmax(-1) == got.argmax(-1)).float().mean() > 0.9


# --- dialogue --------------------------------------------------------------------------------
@pytest.mark.parametrize("termination", ["none", "st"])
def test_dialogue_paths(tmp_path, vocab, termination):
    from tests.conftest import tiny_config
    torch.manual_seed(1)
    tok = Tokenizer(vocab)
    cfg = tiny_config(tok.vocab_size, initializer_range=0.3, termination=termination, eos_token_id=tok.sep_id)
    d = tmp_path / "dialog"
    Transformer(cfg).eval().save_pretrained(d, metadata={"vocab_file": str(vocab)})
    decoding = {"strategy": "sample", "top_k": 5, "seed": 7, "max_new_tokens": 6}
    pairs = [(h[:-1] or ["你好"], h[-1]) for h in HISTORIES]
    scores = {}
    for dtype in (None, "bfloat16"):
        bot = DialogueModel.from_pretrained(d, max_length=64, dtype=dtype)
        for run in (lambda bot=bot: bot.reply_batch(HISTORIES, decoding, seeds=[1, 2, 3]),
                    lambda bot=bot: list(bot.stream_chat(HISTORIES[0], decoding)),
                    lambda bot=bot: bot.reply_batch(HISTORIES[:2], {"strategy": "beam", "num_beams": 2,
                                                                    "max_new_tokens": 4})):
            assert same(on_meta(run), run())
        scores[dtype] = bot.score(pairs)
        assert same(on_meta(lambda bot=bot: bot.score(pairs)), scores[dtype])
    # teacher-forced log-likelihoods of whole replies (sums over their tokens, the log-softmax
    # taken in float32): observed relative difference at most 0.05 %
    for (w, n), (g, m) in zip(scores[None], scores["bfloat16"]):
        assert n == m and abs(g - w) <= 0.005 * abs(w)


# --- attribution -----------------------------------------------------------------------------
def test_attribution_bfloat16_and_meta(model_dir):
    f32 = Attributor.from_pretrained(model_dir)
    bf16 = Attributor.from_pretrained(model_dir, dtype="bfloat16")
    options = dict(n_steps=16, internal_batch_size=None)
    want = f32.attribute_batch(TEXTS, **options)
    got = bf16.attribute_batch(TEXTS, **options)
    assert same(on_meta(lambda: f32.attribute_batch(TEXTS, **options)), want)
    assert same(on_meta(lambda: bf16.attribute_batch(TEXTS, **options)), got)
    zero = attribute_batch(bf16.model, bf16.tokenizer, TEXTS[:1], baseline="zero", n_steps=8)
    assert same(on_meta(lambda: attribute_batch(bf16.model, bf16.tokenizer, TEXTS[:1], baseline="zero",
                                                n_steps=8)), zero)
    for w, g in zip(want, got):
        assert g.label == w.label and g.tokens == w.tokens
        # class probabilities: observed |Δ| at most 0.0036
        assert abs(g.prob - w.prob) < 0.02
        # IG scores: bfloat16 gradients (8 bits) summed in float64 over 16 points: observed max
        # |Δ| at most 4.5 % of the text's largest score, correlation ≥ 0.999
        scale = max(abs(s) for s in w.scores)
        assert max(abs(a - b) for a, b in zip(g.scores, w.scores)) < 0.15 * scale
        assert np.corrcoef(g.scores, w.scores)[0, 1] > 0.99


# --- Perturbed Masking -----------------------------------------------------------------------
def test_impact_matrices_and_prober(model_dir):
    f32 = Prober.from_pretrained(model_dir, layer=-1)
    bf16 = Prober.from_pretrained(model_dir, layer=-1, dtype="bfloat16")
    sentences = [list("今天天气怎么样"), ["hello", "world", "我的", "快递"]]
    mats = {}
    for name, p in (("f32", f32), ("bf16", bf16)):
        for options in (ImpactOptions(layer="all"), ImpactOptions(distance="cosine", subword="avg", token_budget=64)):
            want = impact_matrices(p.model, p.tokenizer, sentences, options)
            assert same(on_meta(lambda p=p, options=options: impact_matrices(p.model, p.tokenizer, sentences,
                                                                             options)), want)
            mats[name, options.distance] = want
        for run in (lambda p=p: p.char_scores(["今天天气 怎么样"]), lambda p=p: p.parse(sentences)):
            assert same(on_meta(run), run())
    # distances between hidden states, taken in float32 from bfloat16 states: observed max |Δ|
    # at most 5.5 % of the matrix's largest entry (cosine distances are small differences of
    # near-1 cosines, the harder case)
    for distance in ("euclidean", "cosine"):
        for w, g in zip(mats["f32", distance], mats["bf16", distance]):
            ok = ~np.isnan(w)
            assert np.abs(g[ok] - w[ok]).max() < 0.15 * np.abs(w[ok]).max()


# --- MGS candidates (training, but drawn from CPU generators on purpose) ---------------------
def test_mgs_candidates_come_from_cpu_streams_whatever_the_default_device():
    from components.mgs import Candidate, MGSConfig, draw_candidates, perturbation
    grads = [torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(2)]
    grads.append(grads[0].to(torch.bfloat16))
    config = MGSConfig(num_candidates=4, mixture=0.5)
    assert on_meta(lambda: draw_candidates(config, 11)) == draw_candidates(config, 11)
    for cand in (Candidate(5, True), Candidate(6, False)):
        want = perturbation(grads, [0.1, 0.0, 0.1], cand)
        got = on_meta(lambda cand=cand: perturbation(grads, [0.1, 0.0, 0.1], cand))
        assert all(g.device == w.device == torch.device("cpu") and g.dtype == w.dtype and torch.equal(g, w)
                   for g, w in zip(got, want))
