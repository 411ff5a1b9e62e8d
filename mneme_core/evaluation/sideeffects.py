"""What the side-effects page and the report show, recomputed for any threshold.

The evaluate stage stores per-category scores, the degraded set T and the baselines in
``evaluation.json``. Moving the prediction threshold changes only the predicted set P, so
the live view re-uses the evaluation's own ``predict`` and ``metrics`` (no second
definition of a metric anywhere) and keeps T, random and oracle as recorded.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from mneme_core.evaluation import evaluate as ev

SHOWN_METRICS = ("accuracy", "precision", "f1", "balanced_accuracy")
DICTIONARY_FREE = "activation diff (no dictionary)"


def live_prediction(per_category: pd.DataFrame, record: dict[str, Any], threshold: float) -> tuple[pd.DataFrame, dict]:
    """Per-category table with ``predicted`` at ``threshold``, and metrics per method.

    ``per_category`` is :func:`mneme_core.evaluation.evaluate.per_category_table`; the metrics dict
    maps method -> metric -> value (random: its mean over draws).
    """
    predicted = ev.predict(per_category, threshold, int(record.get("thresholds", {}).get("predict_min_latents", 1)))
    table = per_category.assign(predicted=per_category["category"].isin(predicted))
    universe = record.get("universe") or table["category"].tolist()
    T = set(record.get("T", []))
    methods: dict[str, dict[str, float | None]] = {"MNEME": _pick(ev.metrics(T, predicted, universe))}
    recorded = record.get("metrics", {})
    if "random" in recorded:
        methods["random"] = {k: (recorded["random"].get(k) or {}).get("mean") for k in SHOWN_METRICS}
    if "accuracy" in recorded.get("naive", {}):
        methods["naive (run's threshold)"] = _pick(recorded["naive"])
    if "accuracy" in recorded.get("activation_diff", {}):
        methods[DICTIONARY_FREE] = _pick(recorded["activation_diff"])
    methods["oracle"] = _pick(ev.metrics(T, T, universe))
    return table, methods


def _pick(m: dict[str, Any]) -> dict[str, float | None]:
    return {k: m.get(k) for k in SHOWN_METRICS}


def headline(record: dict[str, Any]) -> dict[str, Any]:
    """The overview's one-line result: MNEME accuracy / precision / F1 vs random and the
    dictionary-free baseline."""
    m = record.get("metrics", {})
    mneme, rnd = m.get("mneme", {}), m.get("random", {})
    return {
        "degraded categories": len(record.get("T", [])),
        "predicted": len(record.get("P", [])),
        "accuracy (MNEME)": mneme.get("accuracy"),
        "accuracy (random)": (rnd.get("accuracy") or {}).get("mean"),
        "accuracy (activation diff)": m.get("activation_diff", {}).get("accuracy"),
        "precision": mneme.get("precision"),
        "F1": mneme.get("f1"),
    }


def metrics_frame(methods: dict[str, dict[str, float | None]]) -> pd.DataFrame:
    """Methods as rows, metrics as columns (None → NaN, shown as '—')."""
    return pd.DataFrame(methods).T.reindex(columns=list(SHOWN_METRICS)).astype("float64").rename_axis("method")
