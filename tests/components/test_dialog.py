"""Dialogue formatting: alternating speaker segments, truncation, loss masks."""

import pytest

from components.dialog import encode_dialogue, lm_loss_mask, pad_dialogues

TURNS = ["你好", "你好，有什么事吗", "我的快递还没到", "请问订单号是多少", "十二号下的单"]


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_segments_alternate_per_turn_and_the_reply_is_segment_one(tokenizer, n):
    enc = encode_dialogue(tokenizer, TURNS[:n], max_length=128)
    assert enc.kept_turns == n
    # Each turn's tokens (with its closing [SEP]) share one segment; consecutive turns differ.
    per_turn = {}
    for seg, turn in zip(enc.segment_ids[1:], enc.turn_ids[1:]):
        per_turn.setdefault(turn, set()).add(seg)
    assert all(len(s) == 1 for s in per_turn.values())
    segs = [per_turn[i].pop() for i in range(n)]
    assert segs[-1] == 1 and all(a != b for a, b in zip(segs, segs[1:]))
    assert enc.segment_ids[0] == segs[0]                  # [CLS] goes with the first turn
    # Inference: the history is encoded so that the reply to come has segment 1.
    hist = encode_dialogue(tokenizer, TURNS[:n], max_length=128, for_reply=True)
    assert hist.next_segment == 1 and hist.segment_ids[-1] == 0
    assert hist.input_ids == enc.input_ids
    assert tokenizer.decode(enc.input_ids) == "".join(TURNS[:n])


def test_truncation_keeps_the_most_recent_turns(tokenizer):
    full = encode_dialogue(tokenizer, TURNS, max_length=128)
    cut = encode_dialogue(tokenizer, TURNS, max_length=20)
    assert len(cut.input_ids) <= 20 and cut.kept_turns < 5
    assert cut.input_ids[1:] == full.input_ids[len(full.input_ids) - len(cut.input_ids) + 1:]
    assert cut.segment_ids[-1] == 1                        # stable segments after the cut
    assert encode_dialogue(tokenizer, TURNS, max_length=128, max_history=2).kept_turns == 2
    long = encode_dialogue(tokenizer, ["天" * 50], max_length=10)
    assert len(long.input_ids) == 10 and long.kept_turns == 1


def test_loss_masks_select_exactly_the_response_tokens(tokenizer):
    enc = encode_dialogue(tokenizer, TURNS[:3], max_length=128)
    last = lm_loss_mask(enc, "last_turn")
    targets = enc.input_ids[1:]
    chosen = [t for t, m in zip(targets, last) if m]
    response_ids = tokenizer.encode(TURNS[2])[0][1:]       # the response and its [SEP]
    assert chosen == response_ids
    assert sum(lm_loss_mask(enc, "all_turns")) == len(targets)
    with pytest.raises(ValueError, match="valid: all_turns, last_turn"):
        lm_loss_mask(enc, "response")
    batch = pad_dialogues([enc, encode_dialogue(tokenizer, TURNS[:1], 128)], tokenizer.pad_id)
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"][1].sum() == 4
