"""Readers for the SIGHAN Chinese word segmentation bakeoff format (icwb2-data): the raw test text
(one sentence or paragraph a line, no spaces), the gold segmentation (the same lines with words
separated by spaces, two in the PKU files) and the training word list (one word a line), which the
bakeoff's `score` script uses to split recall into in-vocabulary and out-of-vocabulary words.

    lines = read_raw(Path("pku_test.utf8").read_text("utf-8"))            # [(line_no, text)]
    gold = read_gold(Path("pku_test_gold.utf8").read_text("utf-8"))       # [(line_no, words)]
    vocab = read_word_list(Path("pku_training_words.utf8").read_text("utf-8"))
    pairs = align_raw_gold(lines, gold)                                    # [(line_no, text, words)]

Blank lines carry no words and are skipped, but line numbers stay those of the file, so a raw line
and its gold line keep the same number. Full-width spaces (U+3000) count as spaces, as in the files'
own tools (Python's str.split treats them so).
"""

from __future__ import annotations


class SighanFormatError(ValueError):
    """A bakeoff file does not have the expected shape; the message names the line."""


def _lines(text: str):
    # The gold files end their lines with CRLF; a BOM may start the first one.
    for k, line in enumerate(text.lstrip("\ufeff").split("\n"), 1):
        yield k, line.rstrip("\r")


def read_raw(text: str) -> list[tuple[int, str]]:
    """(line number, text) of the non-blank lines, surrounding whitespace removed. A raw line has no
    inner spaces in the bakeoff's test files; one that has them keeps them (they will separate words)."""
    return [(k, line.strip()) for k, line in _lines(text) if line.strip()]


def read_gold(text: str) -> list[tuple[int, list[str]]]:
    """(line number, words) of the non-blank lines of a segmented file."""
    return [(k, line.split()) for k, line in _lines(text) if line.split()]


def read_word_list(text: str) -> set[str]:
    """The training words, one a line (blank lines and surrounding spaces ignored)."""
    return {line.strip() for _, line in _lines(text) if line.strip()}


def align_raw_gold(raw: list[tuple[int, str]], gold: list[tuple[int, list[str]]],
                   source: str = "<gold>") -> list[tuple[int, str, list[str]]]:
    """Pair each raw line with the gold line of the same number; their characters must agree
    (spaces aside). Raises SighanFormatError naming the first line that does not."""
    by_line = dict(gold)
    out = []
    for k, text in raw:
        words = by_line.get(k)
        if words is None:
            raise SighanFormatError(f"{source}:{k}: no gold line for raw line {k} ({text[:20]!r}...)")
        if "".join(words) != "".join(text.split()):
            raise SighanFormatError(f"{source}:{k}: gold words {''.join(words)[:30]!r} do not spell "
                                    f"raw line {k} {text[:30]!r}")
        out.append((k, text, words))
    if len(gold) != len(raw):
        extra = sorted(set(by_line) - {k for k, _ in raw})
        raise SighanFormatError(f"{source}:{extra[0] if extra else '?'}: {len(gold)} gold lines "
                                f"but {len(raw)} raw lines")
    return out
