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
# shown beside the baseline's prediction: its test's known blind spots (docs/DIFFING.md,
# development scenarios 6 and 7), the second only where the effect floor is on
_LARGE_CATEGORY = "makes a small excess that is consistent over a large category very significant"
_READ_AGAINST = "read it against an unrelated fine-tune of the same model before trusting it."
_RANK_CAVEAT = (
    f"Its rank test {_LARGE_CATEGORY}, so text that moves a little whatever the fine-tune taught (text in its "
    f"training data's style, say) can look like a side effect; {_READ_AGAINST}"
)
_FLOOR_CAVEAT = (
    f"Its rank test alone {_LARGE_CATEGORY}; the floor on the mean change keeps only categories that moved far "
    "more than the rest, so it also drops one that moved moderately beside categories that moved a lot (their "
    f"change lifts the rest's mean): the 'baseline p' and 'baseline ratio' columns show both. Either way, "
    f"{_READ_AGAINST}"
)
DIRECTIONS = ev.DIRECTIONS
DirectionUnavailable = ev.DirectionUnavailable
_TABLE_TAIL = (
    "score",
    "n_latents",
    "expected",
    "enrichment_p",
    "rank_p",
    "support",
    "mneme_categories",
    "latents",
    "ranked_latents",
    "baseline_p",
    "baseline_ratio",
)
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
    before the effect floor has no ``min_ratio``: the rank test alone)."""
    return _FLOOR_CAVEAT if float(baseline.get("min_ratio") or 0.0) > 0 else _RANK_CAVEAT


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


def direction_label(record: dict[str, Any] | None, direction: str) -> str:
    """The switch's words: "Degraded ← suppressed latents", "Improved ← amplified latents"."""
    sub = (record or {}).get("directions", {}).get(direction) or {}
    if direction == "degraded":
        latents = sub.get("latent_direction") or (record or {}).get("latent_direction") or "suppressed"
    else:
        latents = sub.get("latent_direction") or EvaluationConfig().improved_latent_direction
    words = "suppressed and amplified" if latents == "both" else latents
    return f"{direction.capitalize()} ← {words} latents"


def columns(direction: str) -> dict[str, str]:
    """The per-category table's columns for the direction's change, interval, p-value and T
    membership (``drop ... degraded`` or ``gain ... improved``)."""
    return ev.DIRECTION_COLUMNS[direction]


def table_columns(direction: str) -> list[str]:
    """Columns the page's per-category table shows, in order (``confirmation`` tests the degraded P only)."""
    c = columns(direction)
    lead = ["category", "score_before", "score_after", c["change"], c["p_value"], c["member"], "predicted"]
    return lead + (["confirmation"] if direction == "degraded" else []) + list(_TABLE_TAIL)


def score_words(record: dict[str, Any], direction: str = "degraded") -> tuple[str, str]:
    """The threshold slider's label and the score column's help for the direction's
    ``predict_score`` (a record from before it was recorded used the enrichment test)."""
    score = ev.direction_record(record, direction).get("thresholds", {}).get("predict_score", "enrichment")
    return _SCORE_WORDS.get(score, _SCORE_WORDS["enrichment"])


def run_threshold(record: dict[str, Any], direction: str = "degraded") -> float:
    """The direction's own prediction threshold (what the evaluate stage used)."""
    return float(ev.direction_record(record, direction).get("thresholds", {}).get("predict_threshold", 0.0))


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
        "accuracy (activation diff)": m.get("activation_diff", {}).get("accuracy"),
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
    """Methods as rows, metrics as columns (None → NaN, shown as '—')."""
    return pd.DataFrame(methods).T.reindex(columns=list(SHOWN_METRICS)).astype("float64").rename_axis("method")
