"""The heat-map page and the PNG: escaping, colours by sign and magnitude, Chinese, no scripts."""

from __future__ import annotations

import html
import re
import struct

import pytest

from components.attribution import Attribution, attribute_batch
from components.attribution_html import cjk_font, render_html, save_html, save_png, token_colour

ATTACK = "<script>alert(1)</script>"


def result(tokens, scores, text="t", **kw) -> Attribution:
    fields = dict(text=text, tokens=tokens, token_ids=list(range(len(tokens))), scores=scores,
                  norms=[abs(s) * 2 for s in scores], label="pos", label_id=1, prob=0.9, target=1,
                  target_label="pos", quantity="prob", f_input=0.9, f_baseline=0.5, delta=1e-6,
                  baseline="pad", rule="gausslegendre", n_steps=50)
    fields.update(kw)
    return Attribution(**fields)


def test_everything_is_escaped():
    r = result(["[CLS]", ATTACK, '"onmouseover="x', "好", "[SEP]"], [0.0, 0.2, -0.1, 0.4, 0.0], text=ATTACK,
               label=ATTACK, target_label="<b>pos</b>")
    page = render_html(r, title=ATTACK)
    assert "<script" not in page.lower() and "<b>pos</b>" not in page
    assert html.escape(ATTACK) in page                                       # shown, as text
    assert page.count(html.escape(ATTACK)) >= 4                             # title, h1, text, token, label
    # The quote cannot close the title attribute and open an event handler.
    assert 'onmouseover="' not in page
    assert "&quot;onmouseover=&quot;x" in page


def test_page_is_standalone_and_renders_chinese(tmp_path):
    path = save_html(result(["[CLS]", "很", "好", "[SEP]"], [0.0, 0.1, 0.3, 0.0], text="很好"), tmp_path / "a.html")
    page = path.read_text(encoding="utf-8")
    assert '<meta charset="utf-8">' in page and ">很</span>" in page and ">好</span>" in page
    for external in ("<script", "<link", "@import", "@font-face", "http://", "https://", "url("):
        assert external not in page, external
    assert "Noto Sans CJK SC" in page                                        # a local CJK font stack


def test_colours_follow_sign_and_magnitude():
    r = result(["[CLS]", "a", "b", "c", "##d", "[SEP]"], [0.0, 0.4, -0.2, -0.4, 0.1, 0.0])
    page = render_html(r)
    colours = re.findall(r'class="([^"]+)" style="background-color: rgba\((\d+), (\d+), (\d+), ([\d.]+)\)"', page)
    assert len(colours) == 6
    spans = [(cls, int(r), int(g), float(a)) for cls, r, g, _, a in colours]
    assert spans[0][3] == 0.0                                                 # zero score: no colour
    assert spans[1][2] > spans[1][1] and spans[4][2] > spans[4][1]          # positive: green
    assert spans[2][1] > spans[2][2] and spans[3][1] > spans[3][2]          # negative: red
    # strength = |score| / max |score| = 0.4
    assert [a for *_, a in spans[1:5]] == pytest.approx([1.0, 0.5, 1.0, 0.25])
    cls_d = spans[4][0]
    assert cls_d == "tok piece" and ">d</span>" in page                       # WordPiece glued, ## dropped
    assert token_colour(0.3, 0.0).endswith("0.000)")


def test_page_from_real_results(make_model, tokenizer):
    model = make_model(num_labels=2, initializer_range=0.3)
    results = attribute_batch(model, tokenizer, ["服务很好", ATTACK], n_steps=8)
    page = render_html(results)
    assert page.count('<section class="item">') == 2
    assert html.escape(ATTACK) in page and ATTACK not in page
    assert f"delta = {results[0].delta:.2e}" in page


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_png(tmp_path, caplog):
    one = result(["[CLS]", "很", "好", "[SEP]"], [0.0, 0.1, -0.3, 0.0])
    w1, h1 = _png_size(save_png(one, tmp_path / "one.png"))
    w2, h2 = _png_size(save_png([one, result(["[CLS]", "hello", "world", "!", "[SEP]"], [0, 1, 2, 3, 0])],
                                tmp_path / "two.png"))
    assert w1 == w2 and h2 > h1 > 100                                          # one panel per text
    if cjk_font() is None:
        assert "no font with CJK glyphs" in caplog.text
    else:
        assert "no font with CJK glyphs" not in caplog.text


def test_cjk_font_has_real_glyphs():
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font
    name = cjk_font()
    if name is None:
        pytest.skip("no CJK font installed (Debian: fonts-noto-cjk or fonts-wqy-microhei)")
    path = font_manager.findfont(font_manager.FontProperties(family=name), fallback_to_default=False)
    font = FT2Font(path)
    assert len({font.get_char_index(ord(c)) for c in "中文好坏"}) == 4


def test_no_results():
    with pytest.raises(ValueError, match="no attribution results"):
        render_html([])
    with pytest.raises(TypeError, match="expected Attribution"):
        render_html([{"tokens": []}])
