"""Readers for gold structures in their published formats: CoNLL-U dependency treebanks and
bracketed (Penn Treebank style) constituency trees.

    sents = read_conllu(Path("dev.conllu").read_text())     # [DepSentence(words, heads, ...)]
    trees = read_bracketed(Path("test.mrg").read_text())     # [BracketedTree(words, spans)]
"""

from __future__ import annotations

from dataclasses import dataclass, field


class TreebankError(ValueError):
    """A gold file is malformed; the message gives the line or tree number."""


@dataclass
class DepSentence:
    words: list[str]
    heads: list[int]
    """1-based head of each word, 0 = root."""
    deprels: list[str] = field(default_factory=list)
    upos: list[str] = field(default_factory=list)

    @property
    def root(self) -> int:
        """1-based index of the (first) word attached to the root."""
        return self.heads.index(0) + 1


def read_conllu(text: str, source: str = "<conllu>") -> list[DepSentence]:
    """Sentences of a CoNLL-U text. Comment lines, multiword-token lines (1-2) and empty nodes (1.1)
    are skipped; every sentence must number its words 1..n and have valid heads."""
    sents: list[DepSentence] = []
    rows: list[tuple[int, list[str]]] = []

    def close():
        if not rows:
            return
        words, heads, rels, upos = [], [], [], []
        for k, (line_no, cols) in enumerate(rows, 1):
            if cols[0] != str(k):
                raise TreebankError(f"{source}:{line_no}: word id {cols[0]!r}, expected {k}")
            try:
                head = int(cols[6])
            except ValueError:
                raise TreebankError(f"{source}:{line_no}: head {cols[6]!r} is not an integer") from None
            if not 0 <= head <= len(rows) or head == k:
                raise TreebankError(f"{source}:{line_no}: head {head} is not a word of this sentence")
            words.append(cols[1])
            heads.append(head)
            rels.append(cols[7])
            upos.append(cols[3])
        if 0 not in heads:
            raise TreebankError(f"{source}:{rows[0][0]}: sentence has no root")
        sents.append(DepSentence(words, heads, rels, upos))
        rows.clear()

    for line_no, line in enumerate(text.splitlines(), 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            close()
            continue
        if line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise TreebankError(f"{source}:{line_no}: expected 10 tab-separated columns, got {len(cols)}")
        if "-" in cols[0] or "." in cols[0]:
            continue
        rows.append((line_no, cols))
    close()
    return sents


@dataclass
class BracketedTree:
    words: list[str]
    spans: set[tuple[int, int]]
    """Constituents [start, end) of two or more words (unlabeled, duplicates from unary chains
    merged; the whole-sentence span included)."""


_UNESCAPE = {"-LRB-": "(", "-RRB-": ")", "-LCB-": "{", "-RCB-": "}", "-LSB-": "[", "-RSB-": "]"}


def _tokens(text: str):
    buf = ""
    for ch in text:
        if ch in "()":
            if buf:
                yield buf
                buf = ""
            yield ch
        elif ch.isspace():
            if buf:
                yield buf
                buf = ""
        else:
            buf += ch
    if buf:
        yield buf


def read_bracketed(text: str, labeled: bool = True, source: str = "<trees>") -> list[BracketedTree]:
    """Trees of a bracketed text, one after another (a tree may span several lines).

    labeled=True (Penn Treebank): the atom after "(" is a label, a node whose only child is a word is
    a preterminal, and empty elements (-NONE-) are removed. labeled=False: every atom is a word,
    e.g. "((the dog) barked)"."""
    toks = list(_tokens(text))
    trees, pos = [], 0

    def parse(depth: int):
        nonlocal pos
        assert toks[pos] == "("
        pos += 1
        label = None
        if labeled and pos < len(toks) and toks[pos] not in "()":
            label = toks[pos]
            pos += 1
        children = []
        while True:
            if pos >= len(toks):
                raise TreebankError(f"{source}: tree {len(trees) + 1} is missing a closing bracket")
            tok = toks[pos]
            if tok == ")":
                pos += 1
                break
            if tok == "(":
                children.append(parse(depth + 1))
            else:
                children.append(_UNESCAPE.get(tok, tok))
                pos += 1
        return label, children

    def flatten(node, words, spans):
        label, children = node
        if label == "-NONE-":
            return
        start = len(words)
        for c in children:
            if isinstance(c, str):
                words.append(c)
            else:
                flatten(c, words, spans)
        if len(words) - start >= 2:
            spans.add((start, len(words)))

    while pos < len(toks):
        if toks[pos] != "(":
            raise TreebankError(f"{source}: text outside a tree near {toks[pos]!r} (tree {len(trees) + 1})")
        node = parse(0)
        words: list[str] = []
        spans: set[tuple[int, int]] = set()
        flatten(node, words, spans)
        if not words:
            raise TreebankError(f"{source}: tree {len(trees) + 1} has no words")
        trees.append(BracketedTree(words, spans))
    return trees
