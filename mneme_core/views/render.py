"""Escaped token-highlight HTML for activating contexts.

Contexts come from arbitrary web and chat text, so every token is untrusted: it is
escaped with ``html.escape`` before it touches markup, and so is every attribute value.
Tokenizers store text in forms people cannot read (GPT-2 byte-level ``Ġ``/``Ċ``,
SentencePiece ``▁`` and ``<0x0A>`` byte fallback); :func:`readable_token` turns them
back into text and makes whitespace visible (``↵`` for newlines, ``⇥`` for tabs, ``·``
for a run of spaces that would otherwise vanish).

Stored tokens already carry their own spacing (a word-initial token starts with a space),
so spans are joined with nothing between them and the token boxes have no horizontal
padding: a sub-word piece ("Ox" "alid" "aceae") must sit flush against the next.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from functools import lru_cache

NEWLINE = "↵"
TAB = "⇥"
SPACE = "·"
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable-unicode → byte table (inverse of its ``bytes_to_unicode``)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _decode_byte_level(token: str) -> str | None:
    """Decode a GPT-2 byte-level token, or None when it is plain text.

    Only tokens holding a remapped character (code point ≥ 256 from the table) are
    byte-level; 'é' alone is ordinary text in both schemes.
    """
    table = _byte_decoder()
    if not any(ord(c) >= 256 and c in table for c in token) or not all(c in table for c in token):
        return None
    raw = bytes(table[c] for c in token)
    text = raw.decode("utf-8", errors="replace")
    if "\ufffd" in text:  # a piece of a multi-byte character: show its bytes
        return "".join(f"\\x{b:02x}" for b in raw)
    return text


def readable_token(token: str) -> str:
    """The token as a reader should see it (still unescaped text).

    Leading-space markers become a real space; newlines and tabs become visible marks
    (the newline mark is followed by a real line break when rendered); a token made only
    of spaces shows one ``·`` per space so it does not disappear.
    """
    m = _BYTE_FALLBACK.match(token)
    if m:
        value = int(m.group(1), 16)
        text = chr(value) if value < 128 else f"\\x{value:02x}"
    else:
        decoded = _decode_byte_level(token)
        text = decoded if decoded is not None else token.replace("▁", " ")
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", TAB)
    if text and text.strip(" ") == "":
        text = SPACE * len(text)
    return text


def _colour(value: float, scale: float) -> str:
    """Background for an activation: transparent at 0, saturated orange at ``scale``."""
    if scale <= 0 or not math.isfinite(value) or value <= 0:
        return "transparent"
    alpha = min(1.0, value / scale)
    return f"rgba(255,140,0,{0.08 + 0.85 * alpha:.2f})"


def _span(token: str, act: float, scale: float) -> str:
    text = readable_token(token)
    shown = html.escape(text.replace("\n", NEWLINE), quote=True)
    if "\n" in text:
        shown += "<br>"
    title = html.escape(f"{act:.4g} · {token!r}", quote=True)
    bold = ";font-weight:600" if scale > 0 and act >= scale * 0.999 else ""
    return f'<span class="tok" title="{title}" style="background:{_colour(act, scale)}{bold}">{shown}</span>'


def highlight_html(
    tokens: Sequence[str],
    acts: Sequence[float],
    *,
    scale: float | None = None,
    window: int = 48,
    label: str = "",
) -> str:
    """One context as highlighted HTML; hover shows each token's activation.

    ``scale`` is the activation that gets full colour (the latent's max, so contexts of
    one latent compare); default is this context's own max. Contexts longer than
    ``window`` show the window around their peak, with the full text in a
    ``<details>`` element that expands on click.
    """
    if len(tokens) != len(acts):
        raise ValueError(f"tokens ({len(tokens)}) and acts ({len(acts)}) differ in length")
    acts = [float(a) for a in acts]
    peak_value = max(acts, default=0.0)
    scale = float(scale) if scale is not None and scale > 0 else peak_value
    spans = [_span(t, a, scale) for t, a in zip(tokens, acts)]
    head = f'<span class="ctx-label">{html.escape(label)}</span> ' if label else ""
    if len(spans) <= window:
        return f'<div class="ctx">{head}{"".join(spans)}</div>'
    peak = max(range(len(acts)), key=acts.__getitem__)
    lo = max(0, min(peak - window // 2, len(spans) - window))
    hi = lo + window
    short = ("… " if lo else "") + "".join(spans[lo:hi]) + (" …" if hi < len(spans) else "")
    return (
        f'<div class="ctx">{head}{short}<details><summary>full context ({len(spans)} tokens)</summary>'
        f"{''.join(spans)}</details></div>"
    )


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~$:@])")
# Some Markdown is found in the text *after* the escapes are undone, so no backslash stops
# it: bare ``https://…``, ``www.…`` and ``name@host`` become links, ``:smile:`` an emoji and
# ``:material/home:`` an icon. A word joiner (U+2060: invisible, zero-width) after each
# ``:`` and ``@`` and after a ``www`` before its dot breaks every one of those patterns.
_AUTO_MARKUP = re.compile(r"[:@]|(?i:www)(?=\.)")
WORD_JOINER = "\u2060"


def escape_markdown(text: str) -> str:
    """Text (a description, a category, a value from the URL) shown literally inside
    Markdown.

    Descriptions come from an LLM reading untrusted contexts: a ``[link](http://…)``, a
    bare address or ``![img](…)`` in one must show as text, not become a live link or a
    remote image, and ``:red[…]`` or ``:material/…:`` must not restyle the page.
    """
    joined = _AUTO_MARKUP.sub(lambda m: m.group(0) + WORD_JOINER, str(text))
    return _MD_SPECIAL.sub(r"\\\1", joined).replace("\n", " ")


CONTEXT_CSS = """
<style>
.ctx{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:0.86rem;line-height:1.7;
     white-space:pre-wrap;word-break:break-word;padding:6px 10px;margin:4px 0;border-radius:6px;
     border:1px solid rgba(128,128,128,0.25)}
.ctx .tok{border-radius:3px;padding:0;margin:0}
.ctx .ctx-label{color:#888;font-size:0.75rem;margin-right:6px}
.ctx details summary{cursor:pointer;color:#888;font-size:0.75rem}
</style>
"""


def contexts_html(
    rows: Sequence[tuple[Sequence[str], Sequence[float], str]], *, scale: float | None = None, window: int = 48
) -> str:
    """Several contexts (tokens, acts, label) sharing one colour scale, with the CSS."""
    if scale is None:
        scale = max((max((float(a) for a in acts), default=0.0) for _, acts, _ in rows), default=0.0)
    body = "".join(highlight_html(t, a, scale=scale, window=window, label=lab) for t, a, lab in rows)
    return CONTEXT_CSS + body
