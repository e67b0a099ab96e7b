"""The public contract, pinned: every `bert4ray` command's option names, `python -m serving`'s
options and the HTTP routes are compared with a committed snapshot. A change to the contract updates
contract_snapshot.json on purpose:

    BERT4RAY_UPDATE_SNAPSHOT=1 .venv/bin/python -m pytest tests/contract -q
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

SNAPSHOT = Path(__file__).with_name("contract_snapshot.json")


def _options(parser: argparse.ArgumentParser) -> list[str]:
    names = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        names.extend(action.option_strings or [f"<{action.dest}>"])
    return sorted(names)


def current_contract() -> dict:
    from pipelines.cli import build_parser
    from serving.__main__ import build_parser as serving_parser
    from serving.ingress import api

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    # Serve's ingress moves the class's routes off `api`; its OpenAPI schema still lists them all.
    routes = sorted(f"{method.upper()} {path}" for path, ops in api.openapi()["paths"].items() for method in ops)
    return {
        "commands": {name: _options(p) for name, p in sorted(sub.choices.items())},
        "python -m serving": _options(serving_parser()),
        "routes": routes,
    }


def test_contract_matches_snapshot():
    now = current_contract()
    if os.environ.get("BERT4RAY_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(now, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    pinned = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    removed = {k: sorted(set(map(str, _flat(pinned[k]))) - set(map(str, _flat(now[k])))) for k in pinned}
    assert not any(removed.values()), f"options or routes removed from the contract: {removed}"
    assert now == pinned, ("the contract gained options or routes; if on purpose, update the snapshot with "
                           "BERT4RAY_UPDATE_SNAPSHOT=1")


def _flat(value) -> list:
    if isinstance(value, dict):
        return [f"{k} {v}" for k, vs in value.items() for v in vs]
    return list(value)
