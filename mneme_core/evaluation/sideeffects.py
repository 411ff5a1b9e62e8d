"""What the side-effects page and the report show, recomputed for any threshold.

The evaluate stage stores per-category scores, the degraded set T and the baselines in
``evaluation.json``, for two directions (``degraded``: the score changed in the bad sense,
read from the latents attributed in ``latent_direction``; ``improved``: in the good sense,
from ``improved_latent_direction``). Moving the prediction threshold changes only the
predicted set P, so the live view re-uses the evaluation's own ``predict`` and ``metrics``
(no second definition of a metric anywhere) and keeps T, random and oracle as recorded.

A run evaluated before there were two directions has no ``directions`` in its record: every
function here still gives "degraded" (the top-level keys), and for "improved" says that
``mneme evaluate`` has to be run again (:func:`unavailable`) instead of failing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from mneme_core.common.config import EvaluationConfig
from mneme_core.evaluation import evaluate as ev

SHOWN_METRICS = ("accuracy", "precision", "f1", "balanced_accuracy")
DICTIONARY_FREE = "activation diff (no dictionary)"
UNDEFINED = "—"  # what the page shows for a metric or a figure whose denominator is 0 (``None``)
# shown beside the baseline's prediction, one short sentence a bullet: its test's known blind
# spots (docs/DIFFING.md, development scenarios 6 and 7), the second only where the effect floor is on
_READ_AGAINST = "read it against an unrelated fine-tune of the same model before trusting it."
_RANK_CAVEAT = (
    "Its rank test makes a small excess that is consistent over a large category very significant.",
    "So text that moves a little whatever the fine-tune taught (text in its training data's style, say) "
    "can look like a side effect.",
    _READ_AGAINST.capitalize(),
)
_FLOOR_CAVEAT = (
    "Its rank test alone makes a small excess that is consistent over a large category very significant.",
    "The floor on the mean change keeps only categories that moved far more than the rest.",
    "So it also drops one that moved moderately beside categories that moved a lot (their change lifts the "
    "rest's mean); the per-category table's test details show both (baseline p and ratio).",
    f"Either way, {_READ_AGAINST}",
)
# a null control passes with (almost) no latent attributed: its attributions are the diff test's
# false alarms, and a 3-standard-error test lets through about 0.3% of latents by chance
NULL_ATTRIBUTED_MAX_SHARE = 0.01
_ATTRIBUTION_KINDS = ("suppressed", "amplified")  # the order ``both`` is said in
DIRECTIONS = ev.DIRECTIONS
DirectionUnavailable = ev.DirectionUnavailable
_TABLE_TAIL = ("score", "n_latents", "latents", "ranked_latents")
# the tests' own figures: behind the page's "test details" switch, so the table fits its frame
_TABLE_DETAILS = ("expected", "enrichment_p", "rank_p", "support", "mneme_categories", "baseline_p", "baseline_ratio")
# what the prediction threshold slider and the score column mean, per ``predict_score``
_SCORE_WORDS = {
    "enrichment": (
        "Prediction threshold (−log10 p of the category's enrichment in attributed latents)",
        "−log10 p of the enrichment test",
    ),
    "rank": (
        "Prediction threshold (−log10 p: the category's latents moved more than the rest)",
        "−log10 p of the rank test over every eligible latent's shift",
    ),
    "shift": (
        "Prediction threshold (share of attributed latents a category needs)",
        "share of attributed latents (by |shift|) mapped to the category",
    ),
    "count": (
        "Prediction threshold (share of attributed latents a category needs)",
        "share of attributed latents (by count) mapped to the category",
    ),
}


def baseline_caveat(baseline: dict[str, Any]) -> str:
    """The dictionary-free baseline's blind spot under the rule it ran with (a record from
    before the effect floor has no ``min_ratio``: the rank test alone), as Markdown bullets
    of one short sentence each (a paragraph of it was too long to read beside the table)."""
    lines = _FLOOR_CAVEAT if float(baseline.get("min_ratio") or 0.0) > 0 else _RANK_CAVEAT
    return _bullets(lines)


def baseline_notes(baseline: dict[str, Any]) -> str:
    """What the page says under "MNEME vs baselines" about the dictionary-free baseline
    (``record["metrics"]["activation_diff"]``): its rule and prediction, that it has no
    direction, and :func:`baseline_caveat`; Markdown bullets. Empty when the record has none."""
    if "set" in baseline:
        said = [
            f"Dictionary-free baseline: {baseline.get('rule', '')}.",
            f"It predicts {', '.join(baseline['set']) or 'nothing'}, from {baseline.get('n_contexts', 0):,} contexts.",
            "It has no direction: the same prediction in both, scored against each direction's own T.",
        ]
        return _bullets(said) + "\n" + baseline_caveat(baseline)
    if baseline:
        return f"Dictionary-free baseline: {baseline.get('skipped', 'not run')}."
    return ""


def _bullets(lines: tuple[str, ...] | list[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def with_baseline(table: pd.DataFrame, baseline: dict[str, Any]) -> pd.DataFrame:
    """``table`` with the dictionary-free baseline's own per-category figures beside MNEME's:
    ``baseline_p`` (its rank test) and ``baseline_ratio`` (the category's mean change over
    the other contexts'; a record from before the floor has none). ``baseline`` is the
    record's ``metrics.activation_diff``; unchanged when it has no per-category table."""
    rows = baseline.get("per_category")
    if not rows:
        return table
    keep = {"p_value": "baseline_p", "ratio": "baseline_ratio"}
    base = pd.DataFrame(rows)
    base = base[["category", *[c for c in keep if c in base.columns]]].rename(columns=keep)
    # JSON holds an undefined ratio as null: numbers (NaN), not objects, for the page's columns
    base = base.astype({c: "float64" for c in base.columns if c != "category"})
    return table.merge(base, on="category", how="left")


def unavailable(record: dict[str, Any] | None, direction: str, run_path: str | Path | None = None) -> str | None:
    """Why ``direction`` cannot be shown for this record (the command that fills it), or None."""
    try:
        ev.direction_record(record or {}, direction, run_path)
    except ev.DirectionUnavailable as exc:
        return str(exc)
    return None


def read_latents(record: dict[str, Any] | None, direction: str) -> tuple[str, ...]:
    """The attributions the direction's prediction reads, as the record says
    (``latent_direction``: ``both`` is suppressed and amplified). A record that does not say
    used the configuration's default, so that is what it read."""
    sub = (record or {}).get("directions", {}).get(direction) or {}
    default = EvaluationConfig()
    if direction == "degraded":
        latents = sub.get("latent_direction") or (record or {}).get("latent_direction") or default.latent_direction
    else:
        latents = sub.get("latent_direction") or default.improved_latent_direction
    return _ATTRIBUTION_KINDS if latents == "both" else (str(latents),)


def latent_words(record: dict[str, Any] | None, direction: str) -> str:
    """:func:`read_latents` in words: "suppressed and amplified", "amplified", ..."""
    return " and ".join(read_latents(record, direction))


def direction_label(record: dict[str, Any] | None, direction: str) -> str:
    """The switch's words, from the record: "Degraded ← suppressed and amplified latents", ..."""
    return f"{direction.capitalize()} ← {latent_words(record, direction)} latents"


def in_both_directions(record: dict[str, Any]) -> list[str]:
    """Categories the run predicts both degraded and improved (each direction's recorded P)."""
    if unavailable(record, "improved"):
        return []
    both = set(ev.direction_record(record, "degraded").get("P", []))
    return sorted(both & set(ev.direction_record(record, "improved").get("P", [])))


def both_directions_note(record: dict[str, Any]) -> str | None:
    """Why a category predicted in both directions is no contradiction, naming those
    categories; None when there is none. The two predictions read different attributed
    latents (:func:`latent_words`), and a category can be rich in the latents both read, or
    in each direction's own: it then enters both P's, and only its measured change says
    which way it moved."""
    both = in_both_directions(record)
    if not both:
        return None
    words = {d: latent_words(record, d) for d in DIRECTIONS}
    shared = [k for k in read_latents(record, "degraded") if k in read_latents(record, "improved")]
    holds = " and ".join(shared) if shared else "suppressed and amplified"
    names = ", ".join(f"**{c}**" for c in both)
    return (
        f"{names} {'is' if len(both) == 1 else 'are'} predicted both degraded and improved (at the run's "
        f"thresholds). That is how the method reads, not a contradiction: degraded is predicted from "
        f"{words['degraded']} latents, improved from {words['improved']} latents, so a category holding "
        f"many {holds} latents enters both. Its measured change (drop, gain) says which way it moved."
    )


def null_control_verdict(record: dict[str, Any], latents: pd.DataFrame | None) -> tuple[bool, str]:
    """Whether a null control (the base model against itself, ``"null_control": true`` in the
    manifest) passed, and the sentence that says so with the run's own numbers. It passes
    when no direction predicts anything and at most ``NULL_ATTRIBUTED_MAX_SHARE`` of the
    latents are attributed: whatever it finds is the method's own noise."""
    P = {d: ev.direction_record(record, d).get("P", []) for d in DIRECTIONS if not unavailable(record, d)}
    n = len(latents) if latents is not None else 0
    labels = latents.get("attribution") if latents is not None else None
    attributed = 0 if labels is None else int(labels.isin(_ATTRIBUTION_KINDS).sum())
    passed = not any(P.values()) and attributed <= NULL_ATTRIBUTED_MAX_SHARE * n
    if any(P.values()):
        sets = "; ".join(f"{d}: {{{', '.join(p)}}}" if p else f"{d}: ∅" for d, p in P.items())
        predicted = f"P = {sets}"
    else:
        predicted = "P = ∅" + (" in both directions" if len(P) > 1 else "")
    return passed, (
        f"**Null control {'passed' if passed else 'failed'}**: the base model against itself. It passes when "
        f"nothing is predicted and (almost) no latent is attributed (at most {NULL_ATTRIBUTED_MAX_SHARE:.0%}): "
        f"here {predicted} and {attributed:,} of {n:,} latents are attributed."
    )


def chart_gaps(table: pd.DataFrame, direction: str, curve: list[dict[str, Any]] | None) -> dict[str, str]:
    """Why a chart of the page would be blank, per chart (``bars``, ``curve``), so the page
    says so instead of drawing an empty frame (a null control leaves both empty)."""
    change = columns(direction)["change"]
    gaps = {}
    moved = pd.to_numeric(table[change], errors="coerce").fillna(0.0) if change in table else pd.Series(dtype=float)
    if not moved.ne(0).any():
        gaps["bars"] = f"No benchmark bars: no category's score changed (every {change} is 0)."
    if len(curve or []) < 2:
        gaps["curve"] = "No threshold curve: no category scored above 0, so every threshold predicts the same set."
    return gaps


def delta_vs_random(value: float | None, random: float | None) -> tuple[str | None, bool]:
    """A metric's delta against random as the page shows it (3 decimals), and whether it is
    level with random: a difference that rounds to 0.000 is neither better nor worse, so it
    gets no arrow and no colour. No delta where either side is undefined."""
    if value is None or random is None:
        return None, True
    delta = round(value - random, 3)
    if delta == 0:
        return "0.000 vs random", True
    return f"{delta:+.3f} vs random", False


def columns(direction: str) -> dict[str, str]:
    """The per-category table's columns for the direction's change, interval, p-value and T
    membership (``drop ... degraded`` or ``gain ... improved``)."""
    return ev.DIRECTION_COLUMNS[direction]


def table_columns(direction: str, details: bool = True) -> list[str]:
    """Columns the page's per-category table shows, in order (``confirmation`` tests the
    degraded P only); without ``details``, not the tests' own figures (expected count, p-values,
    the baseline's), which would push the table past the width of the page."""
    c = columns(direction)
    lead = ["category", "score_before", "score_after", c["change"], c["p_value"], c["member"], "predicted"]
    tail = list(_TABLE_TAIL) + (list(_TABLE_DETAILS) if details else [])
    return lead + (["confirmation"] if direction == "degraded" else []) + tail


def score_words(record: dict[str, Any], direction: str = "degraded") -> tuple[str, str]:
    """The threshold slider's label and the score column's help for the direction's
    ``predict_score`` (a record from before it was recorded used the enrichment test)."""
    score = ev.direction_record(record, direction).get("thresholds", {}).get("predict_score", "enrichment")
    return _SCORE_WORDS.get(score, _SCORE_WORDS["enrichment"])


def run_threshold(record: dict[str, Any], direction: str = "degraded") -> float:
    """The direction's own prediction threshold (what the evaluate stage used)."""
    return float(ev.direction_record(record, direction).get("thresholds", {}).get("predict_threshold", 0.0))


def threshold_step(own: float, top: float, positions: int = 200) -> float:
    """A slider step of about ``top / positions`` of which the run's own threshold is a
    whole multiple, so the slider can go back to exactly the run's prediction."""
    if top <= 0:
        return 0.005
    if own <= 0:
        return top / positions
    return own / max(1, round(positions * own / top))


def threshold_caption(record: dict[str, Any], direction: str = "degraded") -> str:
    """The rule behind the direction's T and its threshold, in one sentence."""
    sub = ev.direction_record(record, direction)
    t = sub.get("thresholds", {})
    change = columns(direction)["change"]
    return (
        f"The run's threshold: {float(t.get('predict_threshold', 0.0)):.4f} ({t.get('predict_threshold_rule', '')}). "
        f"{direction.capitalize()}: {change} ({change_axis(record, direction)}) > {t.get('degrade_threshold', '?')} "
        f"with p < {t.get('significance', '?')} ({t.get('significance_test', '?')})."
    )


def change_axis(record: dict[str, Any], direction: str = "degraded") -> str:
    """What the direction's change column measures: ``score before − after`` or ``after − before``."""
    sense = ev.direction_record(record, direction).get("direction", "drop")
    return "score before − after" if sense == "drop" else "score after − before"


def live_prediction(
    per_category: pd.DataFrame, record: dict[str, Any], threshold: float, direction: str = "degraded"
) -> tuple[pd.DataFrame, dict]:
    """Per-category table with ``predicted`` at ``threshold``, and metrics per method, for one direction.

    ``per_category`` is :func:`mneme_core.evaluation.evaluate.per_category_table` of the same
    direction; the metrics dict maps method -> metric -> value (random: its mean over draws).
    A record without that direction raises :class:`DirectionUnavailable`, whose message is
    the command to run (:func:`unavailable` says so without raising).
    """
    sub = ev.direction_record(record, direction)
    predicted = ev.predict(per_category, threshold, int(sub.get("thresholds", {}).get("predict_min_latents", 1)))
    table = per_category.assign(predicted=per_category["category"].isin(predicted))
    universe = record.get("universe") or table["category"].tolist()
    live = _pick(ev.metrics(set(sub.get("T", [])), predicted, universe))
    return table, recorded_metrics(record, direction, universe) | {"MNEME": live}


def _pick(m: dict[str, Any]) -> dict[str, float | None]:
    return {k: m.get(k) for k in SHOWN_METRICS}


def headline(record: dict[str, Any], direction: str = "degraded") -> dict[str, Any]:
    """The overview's one-line result for a direction: MNEME accuracy / precision / F1 vs
    random and the dictionary-free baseline. For a direction the record lacks: ``{"note":
    <the command to re-run>}``."""
    note = unavailable(record, direction)
    if note:
        return {"note": note}
    sub = ev.direction_record(record, direction)
    m = sub.get("metrics", {})
    mneme, rnd = m.get("mneme", {}), m.get("random", {})
    return {
        f"{direction} categories": len(sub.get("T", [])),
        "predicted": len(sub.get("P", [])),
        "accuracy (MNEME)": mneme.get("accuracy"),
        "accuracy (random)": (rnd.get("accuracy") or {}).get("mean"),
        "accuracy (act. diff)": m.get("activation_diff", {}).get("accuracy"),  # a label the card's width holds
        "precision": mneme.get("precision"),
        "F1": mneme.get("f1"),
    }


def recorded_metrics(
    record: dict[str, Any], direction: str = "degraded", universe: list[str] | None = None
) -> dict[str, dict[str, float | None]]:
    """Metrics per method at the run's own threshold, as the evaluate stage recorded them
    (random: its mean over draws; oracle: P = T)."""
    sub = ev.direction_record(record, direction)
    m, T = sub.get("metrics", {}), set(sub.get("T", []))
    out: dict[str, dict[str, float | None]] = {"MNEME": _pick(m.get("mneme", {}))}
    if "random" in m:
        out["random"] = {k: (m["random"].get(k) or {}).get("mean") for k in SHOWN_METRICS}
    if "accuracy" in m.get("naive", {}):
        out["naive (run's threshold)"] = _pick(m["naive"])
    if "accuracy" in m.get("activation_diff", {}):
        out[DICTIONARY_FREE] = _pick(m["activation_diff"])
    out["oracle"] = _pick(ev.metrics(T, T, universe or record.get("universe") or sorted(T)))
    return out


def metrics_frame(methods: dict[str, dict[str, float | None]]) -> pd.DataFrame:
    """Methods as rows, metrics as columns; an undefined metric (None) becomes NaN, numbers
    stay numbers (the page sorts and formats them) and the page shows NaN as ``UNDEFINED``."""
    return pd.DataFrame(methods).T.reindex(columns=list(SHOWN_METRICS)).astype("float64").rename_axis("method")
