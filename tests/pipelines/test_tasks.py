"""Task hooks on real computations (no Ray): MLM masking statistics, classifier metrics, encoding."""

import json
import random

import pytest
import torch

from pipelines.tasks import get_task, task_names
from pipelines.tasks.classify import macro_f1
from pipelines.tasks.mlm import IGNORE

TEXT = "今天天气很好我们一起去公园散步然后回家吃饭" * 3


def test_registry():
    assert {"mlm", "classify"} <= set(task_names())
    with pytest.raises(KeyError):
        get_task("nope")


def test_mlm_masking_rates(tokenizer):
    task = get_task("mlm")()
    rows = [task.encode({"text": TEXT}, tokenizer, 64) for _ in range(64)]
    g = torch.Generator().manual_seed(0)
    batch = task.collate(rows, tokenizer, g)
    original = tokenizer.pad([(r["input_ids"], [0] * len(r["input_ids"])) for r in rows]).input_ids
    selected = batch["labels"] != IGNORE
    special = torch.isin(original, torch.tensor(sorted(tokenizer.special_ids)))
    assert not (selected & special).any()
    assert torch.equal(batch["labels"][selected], original[selected])
    rate = selected.sum() / (~special).sum()
    assert 0.12 < float(rate) < 0.18
    masked = (batch["input_ids"] == tokenizer.mask_id) & selected
    kept = (batch["input_ids"] == original) & selected
    assert 0.74 < float(masked.sum() / selected.sum()) < 0.86
    assert 0.05 < float(kept.sum() / selected.sum()) < 0.16
    assert torch.equal(batch["input_ids"][~selected], original[~selected])
    # The same generator seed gives the same masks.
    again = task.collate(rows, tokenizer, torch.Generator().manual_seed(0))
    assert torch.equal(again["input_ids"], batch["input_ids"])


def test_whole_word_masking_selects_whole_words(tokenizer):
    import jieba
    task = get_task("mlm")(get_task("mlm").Options(whole_word=True, mask_prob=0.3))
    row = task.encode({"text": TEXT}, tokenizer, 128)
    words = jieba.lcut(TEXT)
    assert max(row["words"]) == len(words) - 1
    batch = task.collate([row] * 16, tokenizer, torch.Generator().manual_seed(1))
    w = torch.tensor(row["words"])
    # [UNK] (a special token) is never a prediction target, so only known tokens are compared.
    known = ~torch.isin(torch.tensor(row["input_ids"]), torch.tensor(sorted(tokenizer.special_ids)))
    assert known.sum() > 40
    for i in range(16):
        sel = batch["labels"][i] != IGNORE
        for word in w[sel].unique():
            assert sel[(w == word) & known].all(), "a word was only partly selected"


def test_macro_f1_against_explicit_counts():
    rng = random.Random(0)
    gold = [rng.randrange(3) for _ in range(200)]
    pred = [g if rng.random() < 0.7 else rng.randrange(3) for g in gold]
    f1s = []
    for c in range(3):
        tp = sum((p == c) & (g == c) for p, g in zip(pred, gold))
        precision = tp / max(1, pred.count(c))
        recall = tp / max(1, gold.count(c))
        f1s.append(2 * precision * recall / (precision + recall))
    assert macro_f1(pred, gold, 3) == pytest.approx(sum(f1s) / 3, abs=1e-12)
    assert macro_f1([0, 0], [1, 1], 2) == 0.0


def test_classify_encode_check_and_evaluate(tokenizer, make_model):
    cls = get_task("classify")
    task = cls(cls.Options(labels=["neg", "pos"]), meta={"labels": ["neg", "pos"]})
    assert task.check_row({"text": "好", "label": "pos"}) is None
    assert task.check_row({"text": "好"}) == "missing field 'label'"
    assert task.check_row({"text": 3, "label": "pos"}) == "field 'text' must be a string, got int"
    assert task.check_row({"text": " ", "label": "pos"}) == "field 'text' is empty"
    assert "not one of" in task.check_row({"text": "好", "label": "meh"})
    rows = [task.encode({"text": t, "label": lab}, tokenizer, 32)
            for t, lab in [("很好", "pos"), ("不好", "neg"), ("好的", "pos")]]
    batch = task.collate(rows, tokenizer, torch.Generator())
    assert batch["labels"].tolist() == [1, 0, 1]
    model = make_model(num_labels=2)
    parts = task.loss_fn(model, batch, None)
    logits = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"]).class_logits
    assert float(parts["loss"].detach()) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, batch["labels"])))
    torch.testing.assert_close(parts["logits"], logits)                # what VAT compares distributions of
    metrics = task.evaluate(model, [batch], tokenizer)
    pred = logits.argmax(-1).tolist()
    assert metrics["accuracy"] == pytest.approx(sum(p == g for p, g in zip(pred, [1, 0, 1])) / 3)
    assert metrics["majority_accuracy"] == pytest.approx(2 / 3)
    assert json.dumps(metrics)


def test_simbert_rows_pairs_and_losses(tokenizer, make_model):
    from components.losses import in_batch_contrastive_loss, seq2seq_loss
    task = get_task("simbert")()
    assert task.check_row({"texts": ["今天天气", "天气如何"]}) is None
    assert task.check_row({"text": "今天天气", "synonyms": ["天气如何"]}) is None
    assert "at least two different" in task.check_row({"texts": ["天气", "天气"]})
    assert "non-empty" in task.check_row({"texts": ["天气", ""]})
    assert "missing field" in task.check_row({"sentences": ["a", "b"]})
    groups = [["今天天气很好", "天气真好"], ["我想退款", "怎么退款", "如何退款"]]
    rows = [task.encode({"texts": g}, tokenizer, 32) for g in groups]
    batch = task.collate(rows, tokenizer, torch.Generator().manual_seed(0))
    ids, seg = batch["input_ids"], batch["segment_ids"]
    assert ids.shape[0] == 4                                   # (a, b) and (b, a) per group, adjacent
    cls, sep = tokenizer.cls_id, tokenizer.sep_id
    for g in range(2):
        first, second = ids[2 * g][batch["attention_mask"][2 * g].bool()], ids[2 * g + 1][batch["attention_mask"][2 * g + 1].bool()]
        a = first.tolist()[1:first.tolist().index(sep)]
        b = first.tolist()[len(a) + 2:-1]
        assert first.tolist() == [cls, *a, sep, *b, sep] and second.tolist() == [cls, *b, sep, *a, sep]
        assert tokenizer.decode(a) in groups[g] and tokenizer.decode(b) in groups[g] and a != b
        assert seg[2 * g][batch["attention_mask"][2 * g].bool()].tolist() == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    assert batch["single_group"].tolist() == [0, 0, 1, 1, 1]
    model = make_model(pooler_activation="linear")
    parts = task.loss_fn(model, batch, None)
    out = model(ids, seg, batch["attention_mask"], mask_mode="unilm")
    s2s = seq2seq_loss(out.logits, ids, seg, batch["attention_mask"])
    con = in_batch_contrastive_loss(out.pooled, 30.0)
    assert float(parts["seq2seq"]) == pytest.approx(float(s2s)) and float(parts["contrastive"]) == pytest.approx(float(con))
    assert float(parts["loss"]) == pytest.approx(float(s2s + con))
    metrics = task.evaluate(model, [batch], tokenizer)
    assert {"seq2seq", "contrastive", "top1", "top5", "top1_chance"} <= set(metrics)


def test_cosent_scores_the_retrieval_vectors_of_each_sentence_alone(tokenizer, make_model):
    from components.losses import cosent_loss
    from components.simbert import SimBERT
    from components.textsim import spearman
    cls = get_task("cosent")
    task = cls(cls.Options(scale=20.0))
    assert task.check_row({"text_a": "今天天气", "text_b": "天气如何", "score": 4}) is None
    assert task.check_row({"text_a": "今天天气", "score": 4}) == "missing field 'text_b'"
    assert "finite number" in task.check_row({"text_a": "a", "text_b": "b", "score": "4"})
    assert "finite number" in task.check_row({"text_a": "a", "text_b": "b", "score": float("nan")})
    assert "finite number" in task.check_row({"text_a": "a", "text_b": "b", "score": True})
    with pytest.raises(ValueError, match="scale must be > 0"):
        cls.Options(scale=0).check()
    pairs = [("今天天气很好", "天气真好", 4.6), ("我想退款", "怎么退款", 3.8), ("快递没到", "今天天气很好", 0.2),
             ("如何修改密码", "密码忘记怎么办", 2.5)]
    rows = [task.encode({"text_a": a, "text_b": b, "score": s}, tokenizer, 32) for a, b, s in pairs]
    batch = task.collate(rows, tokenizer, torch.Generator())
    assert batch["input_ids"].shape[0] == 8 and batch["scores"].tolist() == pytest.approx([4.6, 3.8, 0.2, 2.5])
    assert tokenizer.decode(batch["input_ids"][3].tolist()) == "怎么退款"
    model = make_model(pooler_activation="linear")
    # The sentence vectors are SimBERT's retrieval vectors (pooled [CLS] of the sentence alone).
    sim = SimBERT(model, tokenizer)
    va, vb = sim.encode([a for a, _, _ in pairs]), sim.encode([b for _, b, _ in pairs])
    cosines = torch.tensor((va * vb).sum(axis=1))
    parts = task.loss_fn(model, batch, None)
    assert float(parts["loss"].detach()) == pytest.approx(float(cosent_loss(cosines, batch["scores"])), rel=1e-4)
    metrics = task.evaluate(model, [batch], tokenizer)
    assert metrics["spearman"] == pytest.approx(spearman(cosines.tolist(), [s for *_, s in pairs]))
    assert -1.0 <= metrics["tfidf_spearman"] <= 1.0 and metrics["cosent"] == pytest.approx(float(parts["loss"].detach()))
