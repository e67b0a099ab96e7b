"""DialogueModel at inference (segments reaching the decoder, batched replies, likelihood scores) and
the dialogue LM loss under softmax and self-terminating heads, on tiny random models."""

import pytest
import torch
import torch.nn.functional as F

from components.decoding import DecodingConfig, generate, termination_nll
from components.dialog import (
    DialogueModel,
    dialogue_nll,
    encode_dialogue,
    lm_loss_mask,
    loss_mask,
    normalize_utterance,
    pad_dialogues,
)

TURNS = ["你好", "你好，有什么事吗", "我的快递还没到", "请问订单号是多少", "十二号下的单"]


def recording(model):
    """Wrap model.forward to record the (input_ids, segment_ids) of every call."""
    calls = []
    forward = model.forward

    def spy(input_ids, segment_ids=None, *args, **kwargs):
        calls.append((input_ids.clone(), segment_ids.clone()))
        return forward(input_ids, segment_ids, *args, **kwargs)

    model.forward = spy
    return calls


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_segments_reaching_the_decoder_alternate_and_the_reply_is_segment_one(tokenizer, make_model, n):
    model = make_model()
    calls = recording(model)
    reply = DialogueModel(model, tokenizer).chat(TURNS[:n], {"strategy": "greedy", "max_new_tokens": 4,
                                                             "min_new_tokens": 4})
    assert reply.completion_tokens == 4
    (prefix_ids, prefix_seg), *steps = calls
    assert tokenizer.decode(prefix_ids[0].tolist()) == "".join(TURNS[:n])
    seg = prefix_seg[0].tolist()
    sep = [i for i, t in enumerate(prefix_ids[0].tolist()) if t == tokenizer.sep_id]
    per_turn = [set(seg[a + 1:b + 1]) for a, b in zip([0] + sep[:-1], sep)]       # a turn and its [SEP]
    assert all(len(s) == 1 for s in per_turn) and len(per_turn) == n
    turn_segs = [s.pop() for s in per_turn]
    assert turn_segs[-1] == 0 and all(a != b for a, b in zip(turn_segs, turn_segs[1:]))
    assert seg[0] == turn_segs[0]                                                 # [CLS]
    assert len(steps) == 3 and all(s.tolist() == [[1]] for _, s in steps)       # cached steps: the reply


def test_each_speaker_keeps_its_segment_across_a_conversation(tokenizer, make_model):
    """The user's turns are always segment 0 and the model's always 1, round after round."""
    model = make_model()
    calls = recording(model)
    dialogue = DialogueModel(model, tokenizer)
    history = []
    for user in TURNS[:3]:
        history.append(user)
        calls.clear()
        history.append(dialogue.chat(history, {"strategy": "greedy", "max_new_tokens": 3, "min_new_tokens": 1}).text)
        enc = encode_dialogue(tokenizer, history[:-1], 128, for_reply=True)
        assert calls[0][1][0].tolist() == enc.segment_ids
        speakers = {}
        for seg, turn in zip(enc.segment_ids[1:], enc.turn_ids[1:]):
            speakers.setdefault("user" if turn % 2 == 0 else "bot", set()).add(seg)
        assert speakers["user"] == {0} and speakers.get("bot", {1}) == {1}
        assert all(s.tolist() == [[1]] for _, s in calls[1:])


def test_batched_replies_equal_one_by_one_chats(tokenizer, make_model):
    dialogue = DialogueModel(make_model(seed=3), tokenizer)
    histories = [TURNS[:1], TURNS[:4], TURNS[1:3]]
    settings = {"strategy": "greedy", "max_new_tokens": 6}
    batched = dialogue.reply_batch(histories, settings, batch_size=3)
    single = [dialogue.chat(h, settings) for h in histories]
    assert [(r.text, r.finish_reason, r.prompt_tokens) for r in batched] == \
           [(r.text, r.finish_reason, r.prompt_tokens) for r in single]
    beams = dialogue.reply_batch(histories, {"strategy": "beam", "num_beams": 3, "max_new_tokens": 6})
    assert len(beams) == 3 and all(r.finish_reason in ("eos", "length") for r in beams)


@pytest.mark.parametrize("head", ["none", "st", "nmst"])
def test_the_training_nll_of_a_reply_is_minus_the_decoders_score(tokenizer, make_model, head):
    """Decode a reply, append it as the last turn, and the loss of that turn (tokens + [SEP]) is
    exactly minus the log-probability the decoder gave it: the self-terminating step counts agree."""
    kw = {} if head == "none" else {"termination": head, "termination_epsilon": 0.05, "eos_token_id": tokenizer.sep_id}
    model = make_model(seed=5, **kw)
    enc = encode_dialogue(tokenizer, TURNS[:3], 128, reply_room=8, for_reply=True)
    batch = pad_dialogues([enc], tokenizer.pad_id)
    gen = generate(model, batch["input_ids"], batch["segment_ids"], batch["attention_mask"],
                   DecodingConfig(strategy="greedy", max_new_tokens=8, min_new_tokens=2), eos_token_id=tokenizer.sep_id,
                   mask_mode="causal", target_segment_id=1)[0][0]
    ids = torch.tensor([enc.input_ids + gen.token_ids + [tokenizer.sep_id]])
    seg = torch.tensor([enc.segment_ids + [1] * (len(gen.token_ids) + 1)])
    turns = torch.tensor([enc.turn_ids[1:] + [enc.kept_turns] * (len(gen.token_ids) + 1)])
    with torch.no_grad():
        logits = model(ids, seg, mask_mode="causal").logits
    counted = turns == enc.kept_turns
    if gen.finish_reason == "length":                     # the decoder never scored a final [SEP]
        counted[0, -1] = False
    total, count = dialogue_nll(logits, ids, counted, turns, model.config, tokenizer.sep_id)
    assert int(count) == len(gen.token_ids) + (gen.finish_reason == "eos")
    assert float(total) == pytest.approx(-gen.score, rel=1e-4, abs=1e-4)


def test_self_terminating_steps_restart_at_every_turn(tokenizer, make_model):
    model = make_model(seed=2, termination="st", termination_epsilon=0.1, eos_token_id=tokenizer.sep_id)
    encs = [encode_dialogue(tokenizer, TURNS[:k], 128) for k in (3, 5)]
    batch = pad_dialogues(encs, tokenizer.pad_id)
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"], mask_mode="causal").logits
    turns, everything = batch["target_turns"], loss_mask(batch["target_turns"], "all_turns")
    total, count = dialogue_nll(logits, batch["input_ids"], everything, turns, model.config, tokenizer.sep_id)
    rows, counts = dialogue_nll(logits, batch["input_ids"], everything, turns, model.config, tokenizer.sep_id,
                                per_row=True)
    assert float(rows.sum()) == pytest.approx(float(total), rel=1e-5) and int(counts.sum()) == int(count)
    targets = batch["input_ids"][:, 1:]
    by_turn = 0.0
    for b in range(2):
        for k in range(5):
            m = (turns[b:b + 1] == k)
            if m.any():
                by_turn += float(termination_nll(logits[b:b + 1, :-1], targets[b:b + 1], m, tokenizer.sep_id, 0.1, "st")) \
                    * int(m.sum())
    assert float(total) == pytest.approx(by_turn, rel=1e-5)
    # One generation over the whole dialogue (no restart) is a different, larger loss.
    whole = float(termination_nll(logits[:, :-1], targets, everything, tokenizer.sep_id, 0.1, "st")) * int(count)
    assert whole > float(total) + 1.0


def test_softmax_nll_and_padded_loss_masks(tokenizer, make_model):
    model = make_model(seed=1)
    encs = [encode_dialogue(tokenizer, TURNS[:k], 128) for k in (2, 5, 1)]
    batch = pad_dialogues(encs, tokenizer.pad_id)
    for mode in ("all_turns", "last_turn"):
        mask = loss_mask(batch["target_turns"], mode)
        for row, e in zip(mask, encs):
            expected = lm_loss_mask(e, mode)
            assert row[:len(expected)].tolist() == [bool(x) for x in expected] and not row[len(expected):].any()
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["segment_ids"], batch["attention_mask"], mask_mode="causal").logits
    mask = loss_mask(batch["target_turns"], "last_turn")
    total, count = dialogue_nll(logits, batch["input_ids"], mask, batch["target_turns"], model.config, tokenizer.sep_id)
    logp = F.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    assert float(total) == pytest.approx(-float(logp[mask].sum()), rel=1e-5)
    assert int(count) == sum(len(tokenizer.encode(e)[0]) - 1 for e in (TURNS[1], TURNS[4], TURNS[0]))


def test_score_is_the_log_likelihood_of_the_response(tokenizer, make_model):
    model = make_model(seed=4)
    dialogue = DialogueModel(model, tokenizer)
    pairs = [(TURNS[:2], "好的亲"), (TURNS[:4], "十二号"), (TURNS[:1], "在的")]
    scores = dialogue.score(pairs, batch_size=2)
    for (history, response), (logp, n) in zip(pairs, scores):
        enc = encode_dialogue(tokenizer, [*history, response], 128)
        ids = torch.tensor([enc.input_ids])
        with torch.no_grad():
            lp = F.log_softmax(model(ids, torch.tensor([enc.segment_ids]), mask_mode="causal").logits[0, :-1], -1)
        picked = [lp[t, enc.input_ids[t + 1]] for t, m in enumerate(lm_loss_mask(enc, "last_turn")) if m]
        assert n == len(response) + 1 and logp == pytest.approx(float(sum(picked)), rel=1e-5)


@pytest.mark.parametrize("raw, clean", [
    ("要 买 一把 茶刀 看到 有 零食", "要买一把茶刀看到有零食"),
    ("我 要 买 iphone 6 plus 啊", "我要买iphone 6 plus啊"),
    ("韵达 邮政 EMS 随机 发", "韵达邮政EMS随机发"),
    ("  236 是 三袋 ， 好 吗 ？ ", "236是三袋，好吗？"),
    ("hello   world", "hello world"),
    ("", ""),
])
def test_normalize_utterance(raw, clean):
    assert normalize_utterance(raw) == clean
