"""Pair files (LCQMC/BQ style) -> SimBERT groups, graded pairs (STS-B style) -> cosent rows, and
threshold accuracy against brute force."""

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

from pipelines.pairs import (
    best_threshold,
    pairs_to_groups,
    read_pairs,
    read_scored_pairs,
    threshold_accuracy,
    write_scored_pairs,
)


def write(tmp_path, text, name="pairs.tsv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_positive_pairs_join_into_connected_groups(tmp_path):
    path = write(tmp_path, "text_a\ttext_b\tlabel\n"
                 "怎么改密码\t密码怎么改\t1\n"
                 "密码怎么改\t如何修改密码\t1\n"
                 "今天天气\t明天天气\t0\n"
                 "快递没到\t快递怎么还没到\t1\n"
                 "如何修改密码\t怎么改密码\t1\n")
    pairs = read_pairs(path)
    assert len(pairs) == 5 and pairs[2] == ("今天天气", "明天天气", 0)
    assert pairs_to_groups(pairs) == [["怎么改密码", "密码怎么改", "如何修改密码"], ["快递没到", "快递怎么还没到"]]


@pytest.mark.parametrize("text, message", [
    ("a\tb\t1\nonly two\tfields\n", "pairs.tsv:2: expected 'text_a<TAB>text_b<TAB>label', got 2 field(s)"),
    ("a\tb\t1\nc\td\tyes\n", "pairs.tsv:2: label must be 0 or 1, got 'yes'"),
    ("a\t\t1\n", "pairs.tsv:1: empty sentence"),
    ("\n\n", "no pairs"),
])
def test_malformed_pair_files_name_the_line(tmp_path, text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_pairs(write(tmp_path, text))


def test_graded_pairs_become_cosent_rows_and_thresholded_groups(tmp_path):
    path = write(tmp_path, "一个女人在切洋葱。\t一位女士在切洋葱。\t5\n"
                 "一个男人在弹吉他。\t一只狗在跑。\t0.4\n"
                 "一个男人在弹吉他。\t一个人在弹吉他。\t4\n", "sts.data")
    assert read_scored_pairs(path)[1] == ("一个男人在弹吉他。", "一只狗在跑。", 0.4)
    assert [label for *_, label in read_pairs(path, min_score=4)] == [1, 0, 1]
    out, n = write_scored_pairs(path, tmp_path / "out" / "scored.jsonl")
    rows = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert n == 3 and rows[0] == {"text_a": "一个女人在切洋葱。", "text_b": "一位女士在切洋葱。", "score": 5.0}
    assert not list(out.parent.glob(".*.tmp"))


@pytest.mark.parametrize("text, message", [
    ("a\tb\t1\nc\td\n", "sts.data:2: expected 'text_a<TAB>text_b<TAB>score', got 2 field(s)"),
    ("a\tb\t1\nc\td\thigh\n", "sts.data:2: score must be a number, got 'high'"),
    ("a\tb\tnan\n", "sts.data:1: score must be finite"),
    ("s1\ts2\tscore\n", "no pairs"),                  # a header alone
])
def test_malformed_graded_pair_files_name_the_line(tmp_path, text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_scored_pairs(write(tmp_path, text, "sts.data"))


def test_best_threshold_equals_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(1, 12))
        scores = np.round(rng.normal(size=n), 1)          # ties included
        labels = rng.integers(0, 2, size=n)
        t, acc = best_threshold(scores, labels)
        assert acc == pytest.approx(((scores >= t) == labels.astype(bool)).mean())
        grid = np.concatenate([scores, [scores.max() + 1]])
        brute = max(((scores >= g) == labels.astype(bool)).mean() for g in grid)
        assert acc == pytest.approx(brute)


def test_threshold_accuracy_uses_the_dev_threshold_on_test():
    out = threshold_accuracy([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], [0.3, 0.6, 0.7, 0.4], [0, 1, 1, 1])
    assert out["threshold"] == pytest.approx(0.5) and out["dev_accuracy"] == 1.0
    assert out["test_accuracy"] == 0.75


def test_data_pairs_command(tmp_path):
    src = write(tmp_path, "".join(f"{a}\t{b}\t1\n" for a, b in itertools.pairwise(["甲乙", "乙丙", "丙丁"])))
    out = tmp_path / "groups.jsonl"
    proc = subprocess.run([sys.executable, "-m", "pipelines", "data", "pairs", "--input", str(src), "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == \
        [{"texts": ["甲乙", "乙丙", "丙丁"]}]
    bad = subprocess.run([sys.executable, "-m", "pipelines", "data", "pairs", "--out", str(out)],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "needs --input" in bad.stderr and "Traceback" not in bad.stderr
    both = subprocess.run([sys.executable, "-m", "pipelines", "data", "pairs", "--input", str(src), "--scores",
                           "--min-score", "4", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert both.returncode == 2 and "choose one" in both.stderr and "Traceback" not in both.stderr


def test_pairs_from_groups_balance_positives_and_negatives():
    from pipelines.pairs import pairs_from_groups
    groups = [["a1", "a2", "a3"], ["b1", "b2"], ["c1", "c2"]]
    pairs = pairs_from_groups(groups, seed=0)
    pos = [p for p in pairs if p[2] == 1]
    neg = [p for p in pairs if p[2] == 0]
    assert len(pos) == 5 and len(neg) == 5
    member = {s: i for i, g in enumerate(groups) for s in g}
    assert all(member[a] == member[b] for a, b, _ in pos) and all(member[a] != member[b] for a, b, _ in neg)
    assert pairs == pairs_from_groups(groups, seed=0)
