"""The main job as a new user runs it: `bert4ray quickstart --serve` in an empty directory, with its
defaults, answers over HTTP within 60 s of the server starting; after Ctrl-C, the serve command that
the quickstart printed serves the same model again."""

from __future__ import annotations

import json
import re
import shlex
import time

import httpx
import pytest

from tests.serving.serve_process import BIN, SERVING_LINE, ServeProcess, get_ready, parse_shares

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

READY_S = 60
SERVE_IT = re.compile(r"Serve it:\s+(bert4ray serve [^\n]+)")
TRAINED = re.compile(r"done in \d+ s")


def ask_similar(base: str) -> list[dict]:
    r = httpx.post(f"{base}/v1/similar", json={"text": "明天会下雨吗", "n": 16, "k": 3}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["candidates"]


def test_quickstart_serves_and_its_printed_command_serves_again(tmp_path):
    quick = ServeProcess([str(BIN / "bert4ray"), "quickstart", "--serve"], tmp_path, tmp_path / "quickstart.log")
    try:
        quick.wait_for(TRAINED, 1200)
        trained_at = time.monotonic()
        base = quick.wait_for(SERVING_LINE, READY_S).group(1)
        assert time.monotonic() - trained_at < READY_S
        get_ready(base, 10)
        assert ask_similar(base)
        cpus, shares = parse_shares(quick.output())
        assert shares["retriever"] + shares["generator"] + shares["ingress"] <= cpus
    finally:
        quick.stop()
    assert quick.proc.returncode == 0, quick.output()[-3000:]

    workdir = tmp_path / "bert4ray-runs" / "quickstart"
    report = json.loads((workdir / "quickstart.json").read_text(encoding="utf-8"))
    assert report["metrics"]["top1"] > report["metrics"]["top1_chance"]
    printed = SERVE_IT.search(quick.output()).group(1).strip()
    assert printed == f"bert4ray serve --model {workdir / 'model'} --index {workdir / 'index'}"
    argv = shlex.split(printed)
    again = ServeProcess([str(BIN / argv[0]), *argv[1:]], tmp_path, tmp_path / "serve.log")
    try:
        base = again.wait_for(SERVING_LINE, READY_S).group(1)
        assert base == "http://127.0.0.1:8000"
        get_ready(base, 10)
        assert ask_similar(base)
        hits = httpx.post(f"{base}/v1/search", json={"query": "明天会下雨吗", "k": 3}, timeout=30).json()["hits"]
        assert len(hits) == 3
    finally:
        again.stop()
    assert again.proc.returncode == 0, again.output()[-3000:]
