"""The Transformer against Hugging Face transformers, UniLM invariance, and the decoding cache."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel

from components.config import ConfigError, ModelConfig
from components.masks import build_mask
from components.model import Transformer

HF_KW = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
             max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _inputs(B=3, T=12, V=97, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (B, T), generator=g)
    am = torch.ones(B, T, dtype=torch.long)
    am[1, 8:] = 0
    am[2, 10:] = 0
    seg = torch.zeros(B, T, dtype=torch.long)
    seg[:, 6:] = 1
    seg[am == 0] = 0
    return ids, seg, am


def _hf_mlm(tmp_path, **kw):
    torch.manual_seed(0)
    hf = BertForMaskedLM(BertConfig(**{**HF_KW, **kw})).eval()
    hf.save_pretrained(tmp_path)
    return hf


def test_mlm_logits_match_transformers(tmp_path):
    hf = _hf_mlm(tmp_path)
    report = []
    model = Transformer.from_pretrained(tmp_path, report=report).eval()
    assert report == ["bert.pooler.dense.weight", "bert.pooler.dense.bias"]  # BertForMaskedLM has no pooler
    ids, seg, am = _inputs()
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=seg, attention_mask=am, output_hidden_states=True)
        out = model(ids, seg, am)
    valid = am.bool()
    assert (out.logits - ref.logits)[valid].abs().max() < 1e-4
    for a, b in zip(out.hidden_states, ref.hidden_states):
        assert (a - b)[valid].abs().max() < 1e-4


def test_unilm_logits_match_transformers_with_explicit_4d_mask(tmp_path):
    hf = _hf_mlm(tmp_path)
    model = Transformer.from_pretrained(tmp_path).eval()
    ids, seg, am = _inputs()
    allowed = build_mask("unilm", am, seg)                          # (B, 1, T, T) bool
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        ref = hf(input_ids=ids, token_type_ids=seg, attention_mask=additive).logits
        out = model(ids, seg, am, mask_mode="unilm").logits
    assert (out - ref)[am.bool()].abs().max() < 1e-4


def test_classifier_and_bare_encoder_directories_load(tmp_path):
    torch.manual_seed(0)
    clf = BertForSequenceClassification(BertConfig(**HF_KW, num_labels=3)).eval()
    clf.save_pretrained(tmp_path / "clf")
    model = Transformer.from_pretrained(tmp_path / "clf").eval()
    assert model.config.num_labels == 3
    ids, seg, am = _inputs()
    with torch.no_grad():
        assert torch.allclose(model(ids, seg, am).class_logits,
                              clf(input_ids=ids, token_type_ids=seg, attention_mask=am).logits, atol=1e-5)
    bare = BertModel(BertConfig(**HF_KW)).eval()
    bare.save_pretrained(tmp_path / "bare")                           # names without the "bert." prefix
    report = []
    enc = Transformer.from_pretrained(tmp_path / "bare", report=report).eval()
    assert any(name.startswith("cls.predictions") for name in report)   # the MLM head is new
    with torch.no_grad():
        ref = bare(input_ids=ids, token_type_ids=seg, attention_mask=am)
        out = enc(ids, seg, am)
    assert (out.last_hidden_state - ref.last_hidden_state)[am.bool()].abs().max() < 1e-4
    assert (out.pooled - ref.pooler_output).abs().max() < 1e-4


def test_pytorch_model_bin_loads_with_weights_only(tmp_path):
    hf = _hf_mlm(tmp_path / "st")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    a = Transformer.from_pretrained(tmp_path / "st").eval()
    b = Transformer.from_pretrained(tmp_path / "bin").eval()
    ids, seg, am = _inputs()
    with torch.no_grad():
        assert torch.equal(a(ids, seg, am).logits, b(ids, seg, am).logits)


def test_saved_directory_loads_in_transformers(tmp_path, make_model):
    model = make_model(seed=3)
    model.save_pretrained(tmp_path / "out", metadata={"task": "mlm"})
    meta = json.loads((tmp_path / "out" / "bert4ray.json").read_text())
    assert meta["task"] == "mlm" and meta["model"]["attention"] == "softmax"
    hf = BertForMaskedLM.from_pretrained(tmp_path / "out").eval()
    V = model.config.vocab_size
    ids, seg, am = _inputs(V=V)
    with torch.no_grad():
        assert (model(ids, seg, am).logits - hf(input_ids=ids, token_type_ids=seg,
                                                attention_mask=am).logits)[am.bool()].abs().max() < 1e-4
    again = Transformer.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert torch.equal(again(ids, seg, am).logits, model(ids, seg, am).logits)


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_unilm_source_states_do_not_depend_on_the_target(make_model, attention):
    model = make_model(attention=attention)
    src = torch.tensor([[2, 30, 31, 32, 33, 3]])
    tgt = torch.tensor([[40, 41, 42, 3]])
    both = torch.cat([src, tgt], 1)
    seg = torch.cat([torch.zeros_like(src), torch.ones_like(tgt)], 1)
    with torch.no_grad():
        alone = model(src, mask_mode="unilm")
        paired = model(both, seg, mask_mode="unilm")
    for a, b in zip(alone.hidden_states, paired.hidden_states):
        assert torch.allclose(a, b[:, :src.shape[1]], atol=1e-6)
    assert torch.allclose(alone.pooled, paired.pooled, atol=1e-6)


def _decode_and_compare(model, mode, sources, targets):
    """Cached step-by-step logits vs full recomputation, after expand(2) and a reorder."""
    B, P = len(sources), max(len(s) for s in sources)
    ids = torch.zeros(B, P, dtype=torch.long)
    am = torch.zeros(B, P, dtype=torch.long)
    for i, s in enumerate(sources):
        ids[i, :len(s)] = torch.tensor(s)
        am[i, :len(s)] = 1
    tseg = 1 if mode == "unilm" else 0
    worst = 0.0
    with torch.no_grad():
        cache = model(ids, torch.zeros_like(ids), am, mask_mode=mode, use_cache=True).cache
        cache = cache.expand(2)                                   # rows: s0, s0, s1, s1, ...
        order = torch.tensor([3, 0, 2, 1])
        cache = cache.select(order)
        rows = [[0, 0, 1, 1][i] for i in order.tolist()]
        for t in range(targets.shape[1]):
            new = targets[order, t:t + 1]
            out = model(new, torch.full_like(new, tseg), cache=cache)
            cache = out.cache
            for b, r in enumerate(rows):
                src = torch.tensor(sources[r])
                full = torch.cat([src, targets[order[b], :t + 1]])[None]
                seg = torch.cat([torch.zeros(len(src)), torch.full((t + 1,), tseg)]).long()[None]
                ref = model(full, seg, mask_mode=mode).logits[0, -1]
                worst = max(worst, (ref - out.logits[b, -1]).abs().max().item())
    return worst


@pytest.mark.parametrize("attention", ["softmax", "linear"])
@pytest.mark.parametrize("mode", ["unilm", "causal"])
def test_cached_decoding_equals_full_recomputation(make_model, attention, mode):
    model = make_model(attention=attention)
    sources = [[2, 10, 11, 12, 13, 14, 3], [2, 20, 21, 3]]
    targets = torch.randint(5, 200, (4, 6), generator=torch.Generator().manual_seed(0))
    assert _decode_and_compare(model, mode, sources, targets) < 1e-4


def test_cache_accepts_several_new_tokens_at_once(make_model):
    for attention in ("softmax", "linear"):
        model = make_model(attention=attention)
        src = torch.tensor([[2, 10, 11, 3]])
        new = torch.tensor([[40, 41, 42]])
        with torch.no_grad():
            cache = model(src, mask_mode="causal", use_cache=True).cache
            step = model(new, cache=cache).logits
            full = model(torch.cat([src, new], 1), mask_mode="causal").logits[:, 4:]
        assert torch.allclose(step, full, atol=1e-5)


def test_cache_buffers_are_copy_on_write_and_grow(make_model):
    """Keys and values are written in place into buffers with room to grow. Appending twice to the
    same cache state (two branches), reordering rows mid-way and outgrowing the buffer must all
    leave every cache object meaning exactly its own sequence."""
    model = make_model()
    src = torch.tensor([[2, 10, 11, 3], [2, 20, 21, 3]])
    g = torch.Generator().manual_seed(1)
    steps = 60                                               # beyond the first buffer's capacity
    a_tokens = torch.randint(5, 200, (2, steps), generator=g)
    b_tokens = torch.randint(5, 200, (2, steps), generator=g)

    def reference(prefix_rows, tokens, t):
        full = torch.cat([src[prefix_rows], tokens[:, :t + 1]], 1)
        seg = torch.cat([torch.zeros_like(src[prefix_rows]), torch.ones_like(tokens[:, :t + 1])], 1)
        return model(full, seg, mask_mode="unilm").logits[:, -1]

    b_tokens[:, 0] = a_tokens[:, 0]                          # both branches share the first step
    one = torch.ones(2, 1, dtype=torch.long)
    with torch.no_grad():
        root = model(src, mask_mode="unilm", use_cache=True).cache
        root = model(a_tokens[:, :1], one, cache=root).cache
        a, b, a_rows = root, root, torch.tensor([0, 1])     # a_rows: the source of each row of a
        for t in range(1, steps):
            a_out = model(a_tokens[:, t:t + 1], one, cache=a)
            b_out = model(b_tokens[:, t:t + 1], one, cache=b)   # the same states: b copies first
            a, b = a_out.cache, b_out.cache
            assert torch.allclose(a_out.logits[:, -1], reference(a_rows, a_tokens, t), atol=1e-4)
            assert torch.allclose(b_out.logits[:, -1], reference(torch.tensor([0, 1]), b_tokens, t), atol=1e-4)
            if t == 20:                                      # reorder the rows of branch a mid-way
                flip = torch.tensor([1, 0])
                a, a_rows, a_tokens = a.select(flip), a_rows[flip], a_tokens[flip]
        assert a.layers[0].k.shape[2] == src.shape[1] + steps
        assert a.layers[0].k_buf.shape[2] > 2 * (src.shape[1] + 1) + 32      # it grew at least once


def test_bad_inputs_fail_with_clear_messages(tmp_path, make_model):
    model = make_model()
    ids = torch.tensor([[2, 10, 3]])
    with pytest.raises(ValueError, match="unknown mask_mode 'sideways'; valid: bidirectional, unilm, causal"):
        model(ids, mask_mode="sideways")
    with pytest.raises(ValueError, match="max_position_embeddings=128"):
        model(torch.full((1, 129), 10))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Transformer.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="'hidden_act' has unknown value 'gleu'.*did you mean 'gelu'"):
        ModelConfig(vocab_size=10, hidden_size=8, num_attention_heads=2, hidden_act="gleu")
    with pytest.raises(ConfigError, match="'hidden_size' .* divisible by 'num_attention_heads'"):
        ModelConfig(vocab_size=10, hidden_size=10, num_attention_heads=4)


def test_missing_or_misshapen_tensor_is_named_and_nothing_is_loaded(tmp_path, make_model):
    make_model().save_pretrained(tmp_path / "m")
    weights = load_file(str(tmp_path / "m" / "model.safetensors"))
    name = "bert.encoder.layer.1.attention.self.key.weight"
    broken = dict(weights)
    del broken[name]
    save_file(broken, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ValueError, match=f"missing parameter '{name}'"):
        Transformer.from_pretrained(tmp_path / "m")
    broken[name] = torch.zeros(7, 32)
    save_file(broken, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ValueError, match=rf"'{name}' has shape \(7, 32\), the config expects \(32, 32\)"):
        Transformer.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read safetensors"):
        Transformer.from_pretrained(tmp_path / "m")


def test_save_is_atomic_and_keeps_the_old_directory_on_failure(tmp_path, make_model, monkeypatch):
    model = make_model()
    model.save_pretrained(tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    import components.weights as weights

    def explode(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(weights, "save_file", explode)
    with pytest.raises(OSError, match="disk full"):
        make_model(seed=5).save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]                # no temporary left behind
