"""Prompts for LLM explainers and scorers, and parsers that survive chatty answers.

Delphi-style: each example shows the window with the latent's above-threshold token runs
marked ``<<like this>>``; the model is asked for one concise description on a line
starting ``Description:``. Small local models rarely obey the format exactly, so the
parser falls back through several readings instead of failing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mneme_core.interp.examples import Example

Messages = list[dict[str, str]]

EXPLAIN_SYSTEM = (
    "You are an interpretability researcher. You study one latent feature of a language "
    "model. You see text excerpts where the feature is active; the tokens where it fires "
    "are marked <<like this>>. Work out what the marked tokens and their contexts have in "
    "common. Answer with one concise description (at most 15 words) on a last line that "
    "starts with 'Description:'."
)

DETECT_SYSTEM = (
    "You check whether text excerpts match a description of a language-model feature. "
    "For each numbered excerpt, answer 1 if the feature described would fire somewhere "
    "in it, else 0. Reply with only a list of 0s and 1s, one per excerpt, like [1, 0, 1]."
)

FUZZ_SYSTEM = (
    "You check whether marked tokens match a description of a language-model feature. In "
    "each numbered excerpt some tokens are marked <<like this>>. Answer 1 if the marked "
    "tokens are what the description says the feature fires on, else 0. Reply with only "
    "a list of 0s and 1s, one per excerpt, like [1, 0, 1]."
)

LABEL_SYSTEM = (
    "You give short topic labels. Given a description of a language-model feature, reply "
    "with a category of one or two words (for example: biology, law, deception, "
    "arithmetic). Reply with the label only."
)


def mark(example: Example, threshold: float = 0.0) -> str:
    """The example's text with each run of tokens whose activation exceeds ``threshold``
    wrapped in ``<<...>>`` (adjacent tokens join one run, as Delphi does)."""
    return mark_positions(example.tokens, [a > threshold for a in example.acts])


def mark_positions(tokens: Sequence[str], marked: Sequence[bool]) -> str:
    out: list[str] = []
    inside = False
    for tok, m in zip(tokens, marked):
        if m and not inside:
            out.append("<<")
        elif not m and inside:
            out.append(">>")
        inside = m
        out.append(tok)
    if inside:
        out.append(">>")
    return "".join(out).replace("\n", " ")


def explain_messages(examples: Sequence[Example]) -> Messages:
    lines = []
    for i, ex in enumerate(examples, 1):
        peak = max(range(len(ex.acts)), key=ex.acts.__getitem__) if ex.acts else 0
        lines.append(f"Example {i}: {mark(ex)}")
        if ex.tokens:
            lines.append(f"  (strongest on {ex.tokens[peak].strip()!r}, activation {ex.acts[peak]:.2f})")
    user = "\n".join(lines) + "\n\nWhat does this feature detect? End with 'Description: ...'."
    return [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": user}]


def judge_messages(system: str, description: str, texts: Sequence[str]) -> Messages:
    body = "\n".join(f"{i}. {t}" for i, t in enumerate(texts, 1))
    user = f"Feature description: {description}\n\nExcerpts:\n{body}\n\nAnswer with a list of {len(texts)} values."
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def label_messages(description: str) -> Messages:
    return [
        {"role": "system", "content": LABEL_SYSTEM},
        {"role": "user", "content": f"Description: {description}\nLabel:"},
    ]


# --------------------------------------------------------------------------- parsing

_THINK = re.compile(r"<think>.*?(</think>|$)", re.S | re.I)
_KEYED = re.compile(
    r"^[\s>*#_\-`]*(?:final\s+)?(?:description|explanation|answer|label)\s*[*_`]*\s*[:：]\s*(.*)$", re.I
)
_CHATTER = re.compile(
    r"^(sure|certainly|of course|okay|ok|here|let me|i think|based on|looking at|the examples)\b", re.I
)


def _clean(text: str) -> str:
    text = text.strip().strip("*_`#> ").strip()
    text = text.strip("\"'“”‘’ ").strip()
    return re.sub(r"\s+", " ", text)[:300]


def parse_description(answer: str) -> str:
    """One description from a model's answer; '' when nothing usable is in it.

    Readings, in order: the last 'Description:' line (text after the colon, or the next
    line when the colon ends its line); else the first line that is not chatter.
    """
    text = _THINK.sub("", answer or "").strip()
    lines = [ln for ln in text.splitlines()]
    for i in range(len(lines) - 1, -1, -1):
        m = _KEYED.match(lines[i])
        if m:
            rest = _clean(m.group(1))
            if not rest:
                rest = next((_clean(ln) for ln in lines[i + 1 :] if _clean(ln)), "")
            if rest:
                return rest
    for ln in lines:
        cleaned = _clean(ln)
        if cleaned and not _CHATTER.match(cleaned) and not cleaned.endswith(":"):
            return cleaned
    return ""


def parse_binary_list(answer: str, n: int) -> list[int] | None:
    """``n`` 0/1 judgements from an answer, or None if it holds no list of that length.

    Accepts '[1, 0, 1]', '1 0 1', one per line with numbering ('1. yes'), yes/no words.
    """
    text = _THINK.sub("", answer or "")
    bracket = re.findall(r"\[([^\[\]]*)\]", text)
    for body in reversed(bracket):
        vals = re.findall(r"\b[01]\b", body)
        if len(vals) == n:
            return [int(v) for v in vals]
    per_line = []
    for ln in text.splitlines():
        ln = re.sub(r"^\s*(?:excerpt\s*)?\d+\s*[.:)\-]\s*", "", ln.strip(), flags=re.I)
        m = re.match(r"^(1|0|yes|no|true|false)\b", ln, re.I)
        if m:
            per_line.append(1 if m.group(1).lower() in ("1", "yes", "true") else 0)
    if len(per_line) == n:
        return per_line
    vals = re.findall(r"\b[01]\b", text)
    return [int(v) for v in vals[-n:]] if len(vals) >= n else None
