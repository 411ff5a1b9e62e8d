"""Token-highlight HTML: every token escaped, whitespace and byte-level tokens readable."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from mneme_core.views.render import (
    NEWLINE,
    SPACE,
    contexts_html,
    highlight_html,
    readable_token,
)

EVIL = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", '" onmouseover="alert(1)', "&amp;"]


class TagCollector(HTMLParser):
    """Every start tag and attribute name the browser would build from the HTML."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [a for a, _ in attrs]

    def handle_data(self, data):
        self.text.append(data)


def parse(markup: str) -> TagCollector:
    p = TagCollector()
    p.feed(markup)
    p.close()
    return p


def test_script_and_img_tokens_render_as_text_not_tags():
    html_out = highlight_html(EVIL + ["ok"], [0.0, 3.0, 1.0, 0.5, 0.1])
    parsed = parse(html_out)
    assert set(parsed.tags) <= {"div", "span", "br", "details", "summary"}
    assert set(parsed.attrs) <= {"class", "title", "style"}  # no onerror / onmouseover / src
    text = "".join(parsed.text)
    assert "<script>alert(1)</script>" in text and "<img src=x onerror=alert(1)>" in text
    assert "&amp;" in text  # the literal token, shown as typed


def test_titles_are_escaped_and_show_the_activation():
    out = highlight_html(["<b>"], [2.5])
    title = re.search(r'title="([^"]*)"', out).group(1)
    assert "<" not in title and "2.5" in title


def test_contexts_html_with_evil_label_and_long_context_is_safe():
    tokens = ["x"] * 100 + EVIL
    acts = [0.0] * 100 + [1.0, 2.0, 3.0, 4.0]
    out = contexts_html([(tokens, acts, "<script>label</script>")], window=16)
    parsed = parse(out)
    assert "script" not in parsed.tags and "img" not in parsed.tags
    assert "details" in parsed.tags  # long contexts expand
    assert "full context (104 tokens)" in "".join(parsed.text)


@pytest.mark.parametrize(
    "token, shown",
    [
        ("Ġthe", " the"),  # GPT-2 leading space
        ("▁the", " the"),  # SentencePiece leading space
        ("Ċ", "\n"),  # GPT-2 newline
        ("<0x0A>", "\n"),  # SentencePiece byte fallback
        ("\t", "⇥"),
        ("ĠĠ", SPACE * 2),  # a run of spaces stays visible
        ("âĢĻ", "\u2019"),  # byte-level UTF-8 of a curly apostrophe
        ("café", "café"),  # plain Latin-1 text is not mistaken for bytes
        ("hello", "hello"),
    ],
)
def test_readable_token(token, shown):
    assert readable_token(token) == shown


def test_partial_multibyte_token_shows_its_bytes():
    assert readable_token("âĢ") == "\\xe2\\x80"


def test_newline_is_marked_and_breaks_the_line():
    out = highlight_html(["a", "Ċ", "b"], [0.0, 1.0, 0.0])
    assert NEWLINE + "</span>" not in out and NEWLINE + "<br></span>" in out


def test_colour_scales_with_activation_and_peak_is_bold():
    out = highlight_html(["lo", "hi", "zero"], [1.0, 4.0, 0.0])
    alphas = [float(a) for a in re.findall(r"rgba\(255,140,0,([0-9.]+)\)", out)]
    assert len(alphas) == 2 and alphas[0] < alphas[1]
    assert "transparent" in out and out.count("font-weight:600") == 1


def test_mismatched_lengths_are_an_error():
    with pytest.raises(ValueError, match="differ in length"):
        highlight_html(["a", "b"], [1.0])


def test_markdown_escaping_keeps_links_and_images_as_text():
    from mneme_core.views.render import escape_markdown

    out = escape_markdown("see [x](http://a) ![i](u) <b>*bold*</b>")
    assert "](" not in out.replace("\\]\\(", "") and "\\!\\[" in out and "\\<b\\>" in out and "\\*bold\\*" in out


def test_sub_word_tokens_sit_flush_without_a_gap():
    """Stored tokens carry their own spaces ("Ox" "alid" "aceae" is one word): spans join with
    nothing between them and the token box adds no horizontal space, which read as
    "Ox alid aceae" in the browser."""
    out = contexts_html([(["Ox", "alid", "aceae", " family"], [0.0, 2.0, 1.0, 0.0], "")])
    assert "".join(parse(out).text).endswith("Oxalidaceae family")
    assert "</span><span" in out and "</span> <span" not in out
    rule = re.search(r"\.ctx \.tok\{([^}]*)\}", out).group(1)
    boxes = dict(d.split(":", 1) for d in rule.split(";") if d)
    for side in ("padding", "margin"):
        assert boxes.get(side, "0").strip() in ("0", "0px"), f"{side} puts a gap between sub-word tokens"
    assert not any(k.startswith(("padding-left", "padding-right", "margin-left", "margin-right")) for k in boxes)
