"""Pictures of token attributions: a standalone HTML heat map and a PNG bar chart.

    from components.attribution_html import render_html, save_png
    page = render_html(results)            # str: one self-contained page, no scripts, no web fonts
    save_png(results, "attributions.png")

Green = the token raises F (the target's probability or logit), red = it lowers it; the colour's
strength is |score| / max |score| within the text. Every piece of text that reaches the page (tokens,
the input text, label names, the title) goes through html.escape, so a text such as
`<script>alert(1)</script>` is shown, never run. Chinese is rendered with the system's CJK fonts
named in the CSS stack; nothing is fetched from the network.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from components.attribution import Attribution

log = logging.getLogger(__name__)

POSITIVE = (22, 150, 70)     # green
NEGATIVE = (210, 40, 40)     # red
SPECIAL_TOKENS = {"[CLS]", "[SEP]", "[PAD]"}

_CSS = """
body { font-family: "Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", "Microsoft YaHei",
       "WenQuanYi Micro Hei", "Hiragino Sans GB", sans-serif; margin: 2em; color: #222; }
.item { margin: 1.5em 0; padding-bottom: 1em; border-bottom: 1px solid #ddd; }
.meta { color: #555; font-size: 0.9em; margin-bottom: 0.6em; }
.tokens { line-height: 2.2; font-size: 1.15em; }
.tok { padding: 0.15em 0.2em; margin: 0 0.08em; border-radius: 3px; }
.tok.piece { margin-left: 0; }
.tok.special { color: #888; font-size: 0.75em; }
.legend span { padding: 0.1em 0.5em; border-radius: 3px; }
table { border-collapse: collapse; font-size: 0.85em; margin-top: 0.5em; }
td, th { padding: 0.1em 0.8em; text-align: right; }
td:nth-child(2) { text-align: left; }
"""


def _as_list(results: Attribution | Iterable[Attribution]) -> list[Attribution]:
    items = [results] if isinstance(results, Attribution) else list(results)
    if not items:
        raise ValueError("no attribution results to draw")
    for r in items:
        if not isinstance(r, Attribution):
            raise TypeError(f"expected Attribution results, got {type(r).__name__}")
    return items


def token_colour(score: float, scale: float) -> str:
    """CSS rgba() of one score: hue by sign, opacity |score| / scale (0 when scale is 0)."""
    strength = min(abs(score) / scale, 1.0) if scale > 0 else 0.0
    r, g, b = POSITIVE if score >= 0 else NEGATIVE
    return f"rgba({r}, {g}, {b}, {strength:.3f})"


def _display(token: str) -> tuple[str, str]:
    """(text to show, css classes): WordPiece continuations glue to the previous piece."""
    if token in SPECIAL_TOKENS:
        return token, "tok special"
    if token.startswith("##") and len(token) > 2:
        return token[2:], "tok piece"
    return token, "tok"


def _item_html(r: Attribution) -> str:
    e = html.escape
    scale = max((abs(s) for s in r.scores), default=0.0)
    spans = []
    for tok, score, norm in zip(r.tokens, r.scores, r.norms):
        shown, cls = _display(tok)
        spans.append(f'<span class="{cls}" style="background-color: {token_colour(score, scale)}" '
                     f'title="{e(tok)}: score {score:+.4g}, norm {norm:.4g}">{e(shown)}</span>')
    rows = "".join(f"<tr><td>{i}</td><td>{e(tok)}</td><td>{s:+.5f}</td><td>{n:.5f}</td></tr>"
                   for i, (tok, s, n) in enumerate(zip(r.tokens, r.scores, r.norms)))
    meta = (f"predicted <b>{e(r.label)}</b> (p = {r.prob:.3f}) · attributed: {e(r.quantity)} of "
            f"<b>{e(r.target_label)}</b> · F(x) = {r.f_input:.4f}, F(baseline) = {r.f_baseline:.4f} "
            f"({e(r.baseline)}) · delta = {r.delta:.2e} · {r.n_steps} {e(r.rule)} steps")
    return (f'<section class="item">\n<div class="text">{e(r.text)}</div>\n<div class="meta">{meta}</div>\n'
            f'<div class="tokens">{"".join(spans)}</div>\n'
            f"<details><summary>scores</summary><table><tr><th>#</th><th>token</th><th>score</th>"
            f"<th>norm</th></tr>{rows}</table></details>\n</section>")


def render_html(results: Attribution | Iterable[Attribution], title: str = "Integrated Gradients") -> str:
    """One standalone HTML page (inline CSS only) showing each result as a coloured token row."""
    items = _as_list(results)
    e = html.escape
    legend = (f'<p class="legend"><span style="background-color: {token_colour(1, 1)}">raises F</span> '
              f'<span style="background-color: {token_colour(-1, 1)}">lowers F</span> '
              "colour strength: |score| relative to the text's largest; hover a token for its numbers</p>")
    body = "\n".join(_item_html(r) for r in items)
    return (f'<!DOCTYPE html>\n<html lang="zh">\n<head>\n<meta charset="utf-8">\n<title>{e(title)}</title>\n'
            f"<style>{_CSS}</style>\n</head>\n<body>\n<h1>{e(title)}</h1>\n{legend}\n{body}\n</body>\n</html>\n")


def save_html(results: Attribution | Iterable[Attribution], path: str | Path, title: str = "Integrated Gradients"
              ) -> Path:
    path = Path(path)
    path.write_text(render_html(results, title), encoding="utf-8")
    return path


# --- PNG -----------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """Family name of an installed font that has CJK glyphs (Debian: fonts-noto-cjk), or None."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    def has_cjk(path: str) -> bool:
        try:
            font = FT2Font(path)
        except (OSError, RuntimeError):
            return False
        # Two distinct real glyphs: placeholder fonts (matplotlib's own "Last Resort") map a whole
        # Unicode block to one box glyph.
        a, b = font.get_char_index(ord("中")), font.get_char_index(ord("文"))
        return a != 0 and b != 0 and a != b

    for entry in font_manager.fontManager.ttflist:
        if has_cjk(entry.fname):
            return entry.name
    # Fonts installed after matplotlib built its cache are not in ttflist yet.
    known = {entry.fname for entry in font_manager.fontManager.ttflist}
    for path in font_manager.findSystemFonts():
        if path not in known and has_cjk(path):
            font_manager.fontManager.addfont(path)
            return font_manager.FontProperties(fname=path).get_name()
    return None


def _needs_cjk(items: list[Attribution]) -> bool:
    return any(ord(ch) > 0x2E80 for r in items for tok in r.tokens for ch in tok)


def save_png(results: Attribution | Iterable[Attribution], path: str | Path, dpi: int = 120) -> Path:
    """A horizontal bar chart per text: one bar per token in reading order, green/red by sign."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global backend state, safe in servers

    items = _as_list(results)
    family = ["DejaVu Sans"]
    if _needs_cjk(items):
        font = cjk_font()
        if font is None:
            log.warning("no font with CJK glyphs is installed (Debian: fonts-noto-cjk); Chinese tokens "
                        "in %s will show as boxes", path)
        else:
            family.insert(0, font)
    heights = [max(1.5, 0.28 * len(r.tokens) + 0.9) for r in items]
    with matplotlib.rc_context({"font.family": family}):
        fig = Figure(figsize=(7, sum(heights)))
        axes = fig.subplots(len(items), 1, squeeze=False, gridspec_kw={"height_ratios": heights})
        for ax, r in zip(axes[:, 0], items):
            y = list(range(len(r.tokens)))
            colours = [tuple(c / 255 for c in (POSITIVE if s >= 0 else NEGATIVE)) for s in r.scores]
            ax.barh(y, r.scores, color=colours)
            ax.set_yticks(y, labels=r.tokens)
            ax.invert_yaxis()                                  # first token on top
            ax.axvline(0.0, color="#444", linewidth=0.8)
            ax.set_xlabel(f"attribution to {r.quantity} of '{r.target_label}'")
            ax.set_title(f"predicted {r.label} (p = {r.prob:.3f}), delta = {r.delta:.1e}", fontsize=10)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=dpi, format="png")
    return path
