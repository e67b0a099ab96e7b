"""`bert4ray attribute` over a tiny saved classifier, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from components.attribution import Attributor

REPO = Path(__file__).resolve().parents[2]


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "pipelines", "attribute", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def classifier_dir(tiny_model_dir):
    return tiny_model_dir(num_labels=2, initializer_range=0.3, labels=["neg", "pos"])


def test_table_html_and_png(classifier_dir, tmp_path):
    text = "服务很好，价格便宜 <script>alert(1)</script>"
    proc = cli("--model", classifier_dir, text, "--steps", 20, "--html", tmp_path / "ig.html",
               "--png", tmp_path / "ig.png")
    assert proc.returncode == 0, proc.stderr
    expected = Attributor.from_pretrained(classifier_dir).attribute(text, n_steps=20)
    out = proc.stdout
    for i, (tok, score) in enumerate(zip(expected.tokens, expected.scores)):
        assert f"{score:+.5f}" in out, (i, tok)
    assert f"label: {expected.label} (p={expected.prob:.4f})" in out
    assert f"delta: {expected.delta:.3e}" in out
    page = (tmp_path / "ig.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page
    assert (tmp_path / "ig.png").read_bytes()[:4] == b"\x89PNG"


def test_json_target_and_options(classifier_dir):
    proc = cli("--model", classifier_dir, "很好", "不好", "--target", "neg", "--steps", 16, "--rule",
               "riemann_middle", "--quantity", "logit", "--baseline", "zero", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["很好", "不好"]
    for r in rows:
        assert (r["target"], r["target_label"], r["quantity"], r["baseline"]) == (0, "neg", "logit", "zero")
        assert (r["rule"], r["n_steps"]) == ("riemann_middle", 16)
        assert abs(sum(r["scores"]) - (r["f_input"] - r["f_baseline"])) == pytest.approx(r["delta"], abs=1e-9)


@pytest.mark.parametrize("args, message", [
    (["--model", "{missing}", "好"], "model directory '{missing}' does not exist"),
    (["--model", "{mlm}", "好"], "has no classifier head (num_labels = 0)"),
    (["--model", "{clf}", "好", "--target", "2"], "target 2 is out of range: the model has 2 labels"),
    (["--model", "{clf}", "好", "--target", "happy"], "unknown target label 'happy'"),
    (["--model", "{clf}", ""], "text is empty"),
    (["--model", "{clf}", "好", "--rule", "simpson"], "unknown integration rule 'simpson'"),
    (["--model", "{clf}", "好", "--steps", "0"], "--steps must be a positive integer"),
    (["--model", "{clf}", "好", "--html", "{missing}/x.html"], "--html: directory of"),
])
def test_bad_input_is_one_line_exit_2(args, message, classifier_dir, tiny_model_dir, tmp_path):
    paths = {"missing": tmp_path / "missing", "mlm": tiny_model_dir("mlm"), "clf": classifier_dir}
    proc = cli(*[a.format(**paths) for a in args])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message.format(**paths) in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_listed_in_help():
    proc = subprocess.run([sys.executable, "-m", "pipelines", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert "attribute" in proc.stdout and "Integrated Gradients" in proc.stdout
