"""Side-effect evaluation: which benchmark categories truly degraded (T), which MNEME
predicted (P), how well P matches T, and what random / naive / oracle guessing would get.

Definitions (every edge case is fixed here, and tested):

**Change.** ``drop = score_before - score_after`` for ``direction="drop"`` (capability
loss: accuracy falls), ``drop = score_after - score_before`` for ``direction="rise"``
(harmful-behaviour rates rise). Either way a positive ``drop`` is the bad direction.

**Degraded set T.** A category is degraded when ``drop > degrade_threshold`` (strictly;
compared after rounding to 12 decimals so a drop that equals the threshold on paper is not
pushed over it by float error) *and* its one-sided p-value is ``< significance``
(``significance = 1`` switches the test off). Tests, for ``n`` questions per category:

- ``ztest``: two-proportion z-test with pooled variance, one-sided. It treats the two
  scores as independent samples; on the *same* questions that is conservative.
- ``bootstrap``: parametric; draws both scores from Binomial(n, score) and reports the
  share of draws whose drop is <= 0 (with the +1 correction).
- ``mcnemar``: exact McNemar on the paired counts ``n_lost`` / ``n_gained`` (questions
  right before and wrong after, and the reverse), which our MC runner records. The right
  test for paired data; needs those columns.
- ``auto`` (default): ``mcnemar`` when the paired counts exist, else ``ztest``.
``ci_low, ci_high`` are a 95% interval for ``drop`` (Wald; bootstrap percentiles for
``bootstrap``; paired Wald for ``mcnemar``).

**Predicted set P.** Latents attributed in ``latent_direction`` (``suppressed`` for
unlearning, ``amplified`` for misalignment / harmful compliance, or ``both``) are grouped
by their MNEME category; each MNEME category maps to its nearest benchmark category by
embedding similarity (``mneme_core.interp.categories.map_categories``, run here, after the
categories stage, on the final names only). ``shared_names`` in the record lists MNEME
labels that already *are* benchmark names — the sign that categories were labelled from
the benchmark's own taxonomy, which makes P less than independent. Per benchmark category: ``n_latents``, ``total_shift``
(sum of |shift|) and ``score``. The default score (``predict_score="enrichment"``) is
``−log10 p`` of a one-sided test that the category holds more attributed latents than it
would if attribution ignored meaning (each latent counted once; ``category_scores`` gives
the test); the alternatives are the category's *share* of ``total_shift`` (``"shift"``) or
of the count (``"count"``), shares summing to 1 so they compare across runs of different
sizes, or ``−log10 p`` of a rank test that needs no label (``"rank"``: the category's
eligible latents moved further, in the reading's direction, than the rest of the pool;
``category_scores`` says how). A category is predicted when ``score >= threshold`` and
``score > 0`` (a tie with the threshold is predicted; under the enrichment and share
scores a category with no attributed latent never is). Default threshold
(``predict_threshold = 0``): for enrichment and rank ``−log10(significance / K)`` for K
benchmark categories (Bonferroni: a method attributing at random predicts any category
with probability at most ``significance``); for shares ``1 / K``, the mean share, i.e.
"more than its fair share of the attributed latents".

**Metrics** over the universe U of benchmark categories, TP = |T∩P| etc.:
accuracy (paper Eq. 4) = TP / |T| (the same number as recall); precision = TP / |P|;
F1 = 2·TP / (|T| + |P|); specificity = TN / |U \\ T|; balanced accuracy = (recall +
specificity) / 2. A ratio whose denominator is 0 is *undefined* and reported as ``None``:
empty T -> accuracy, recall and balanced accuracy undefined; empty P -> precision
undefined (recall = 0, F1 = 0 when T is non-empty); T = U -> specificity and balanced
accuracy undefined; T and P both empty -> F1 undefined.

**Baselines** on the same T and U: random — each category predicted with probability
0.5, ``random_draws`` seeded draws, reporting each metric's mean (over draws where it is
defined) and 2.5–97.5 percentile range; naive — the |P| categories whose names are most
similar to ``intervention_description`` (ties broken by name); oracle — P = T.

**Two directions.** ``record["directions"]`` holds both, each with its own ``direction``
(the sense of change its T counts), ``latent_direction``, ``thresholds``, ``T``, ``P``,
``category_scores``, ``metrics`` and ``curve``. ``degraded``: the change in the bad sense
(``cfg.direction``) against latents attributed in ``latent_direction`` — the paper's
question, and what the record's top-level keys hold (unchanged, for every older reader).
``improved``: the change in the good sense (the opposite ``direction``, through the same
:func:`degraded_table`: same threshold, significance and test) against latents attributed
in ``improved_latent_direction`` (``amplified`` by default: what a fine-tune on a domain
learns more of). The dictionary-free baseline has no direction (it ranks categories by how
much their contexts' activations changed), so both directions score its one prediction,
each against its own T. Records written before there were two directions have no
``directions``; :func:`direction_record` reads "degraded" from their top level and says
that "improved" needs ``mneme evaluate`` again.
"""

from __future__ import annotations

import copy
import math
import typing
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from mneme_core.benchmarks.loaders import (
    PAIRED_COLUMNS,
    BenchmarkError,
    load_benchmark,
    validate_benchmark,
)
from mneme_core.common.atomic import atomic_write_json, write_parquet
from mneme_core.common.config import RUNNER_PREFIX, EvaluationConfig, PredictScore, StudyConfig
from mneme_core.run.reader import Run
from mneme_core.run.store import add_provenance

Direction = Literal["drop", "rise"]
LatentDirection = Literal["suppressed", "amplified", "both"]
METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "specificity", "balanced_accuracy")
# the two directions of a record (``record["directions"]``); the top-level keys are the first's
DIRECTIONS = ("degraded", "improved")
# what each direction's sub-record holds that the top level also holds (for "degraded": equal)
DIRECTION_KEYS = ("direction", "latent_direction", "thresholds", "T", "P", "category_scores", "metrics", "curve")
# per direction, the benchmark.parquet columns of its change, 95% interval, p-value and membership of T
DIRECTION_COLUMNS = {
    "degraded": {
        "change": "drop",
        "ci_low": "ci_low",
        "ci_high": "ci_high",
        "p_value": "p_value",
        "member": "degraded",
    },
    "improved": {
        "change": "gain",
        "ci_low": "gain_ci_low",
        "ci_high": "gain_ci_high",
        "p_value": "gain_p_value",
        "member": "improved",
    },
}
ACTIVATION_DIFF_NOTE = (
    "activation_diff has no direction: it ranks categories by how much their contexts' activations changed, "
    "so it is the same prediction in both directions, scored against each direction's T"
)
MAX_LATENTS_LISTED = 100  # latents named per category in evaluation.json (largest move first)
PREDICT_SCORES = typing.get_args(PredictScore)
TESTED_SCORES = ("enrichment", "rank")  # scores that are −log10 p of a test (the rest are shares)
_Z95 = 1.959963984540054


class EvaluationError(ValueError):
    """The run lacks what the evaluation needs; the message names the missing stage or column."""


# --------------------------------------------------------------------------- degraded set


def _change(before: np.ndarray, after: np.ndarray, direction: Direction) -> np.ndarray:
    if direction not in ("drop", "rise"):
        raise ValueError(f"direction must be 'drop' or 'rise', got {direction!r}")
    return before - after if direction == "drop" else after - before


def _ztest(pb: np.ndarray, pa: np.ndarray, n: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pool = (pb + pa) / 2
    se0 = np.sqrt(pool * (1 - pool) * 2 / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(se0 > 0, stats.norm.sf(d / se0), np.where(d > 0, 0.0, 1.0))
    half = _Z95 * np.sqrt(pb * (1 - pb) / n + pa * (1 - pa) / n)
    return p, d - half, d + half


def _bootstrap(pb: np.ndarray, pa: np.ndarray, n: np.ndarray, direction: Direction, draws: int, seed: int):
    rng = np.random.default_rng(seed)
    kb = rng.binomial(n[None, :], pb[None, :], size=(draws, len(n)))
    ka = rng.binomial(n[None, :], pa[None, :], size=(draws, len(n)))
    d_DK = _change(kb / n, ka / n, direction)
    p = (1 + (d_DK <= 0).sum(axis=0)) / (draws + 1)
    low, high = np.percentile(d_DK, [2.5, 97.5], axis=0)
    return p, low, high


def _mcnemar(bench: pd.DataFrame, direction: Direction, d: np.ndarray):
    missing = [c for c in PAIRED_COLUMNS if c not in bench.columns]
    if missing:
        raise BenchmarkError(
            "significance_test 'mcnemar' needs the paired counts n_lost and n_gained (our runner writes "
            "them); use 'ztest' or 'bootstrap' for score-only benchmark files"
        )
    n = bench["n_questions"].to_numpy(np.float64)
    lost, gained = bench["n_lost"].to_numpy(np.int64), bench["n_gained"].to_numpy(np.int64)
    bad, good = (lost, gained) if direction == "drop" else (gained, lost)
    disc = bad + good
    p = np.where(disc > 0, stats.binom.sf(bad - 1, np.maximum(disc, 1), 0.5), 1.0)
    var = np.maximum(disc / n - d**2, 0) / n
    half = _Z95 * np.sqrt(var)
    return p, d - half, d + half


def degraded_table(
    benchmark: pd.DataFrame,
    *,
    direction: Direction = "drop",
    threshold: float = 0.05,
    alpha: float = 0.05,
    test: Literal["auto", "ztest", "bootstrap", "mcnemar"] = "auto",
    bootstrap_draws: int = 10_000,
    seed: int = 0,
) -> pd.DataFrame:
    """The benchmark table plus ``drop, ci_low, ci_high, p_value, test, degraded``."""
    bench = validate_benchmark(benchmark)
    pb = bench["score_before"].to_numpy(np.float64)
    pa = bench["score_after"].to_numpy(np.float64)
    n = bench["n_questions"].to_numpy(np.float64)
    d = _change(pb, pa, direction)
    if test == "auto":
        test = "mcnemar" if all(c in bench.columns for c in PAIRED_COLUMNS) else "ztest"
    if test == "ztest":
        p, low, high = _ztest(pb, pa, n, d)
    elif test == "bootstrap":
        p, low, high = _bootstrap(pb, pa, n.astype(np.int64), direction, bootstrap_draws, seed)
    elif test == "mcnemar":
        p, low, high = _mcnemar(bench, direction, d)
    else:
        raise ValueError(f"unknown significance test {test!r}; use auto, ztest, bootstrap or mcnemar")
    out = bench.copy()
    out["drop"], out["ci_low"], out["ci_high"], out["p_value"] = d, low, high, p
    out["test"] = test
    significant = np.ones(len(out), dtype=bool) if alpha >= 1 else p < alpha
    out["degraded"] = (np.round(d, 12) > threshold) & significant
    return out


def degraded_set(table: pd.DataFrame) -> set[str]:
    return set(table.loc[table["degraded"], "category"])


# --------------------------------------------------------------------------- predicted set


def humanize(category: str) -> str:
    """Benchmark ids as words for embedding: ``college_medicine`` -> ``college medicine``."""
    return category.replace("_", " ").replace("-", " ").strip()


def category_mapping(
    mneme_categories: Sequence[str], benchmark_categories: Sequence[str], embedder: Any = None
) -> pd.DataFrame:
    """``mneme_category, benchmark_category, similarity``: each MNEME category's nearest
    benchmark category (``mneme_core.interp.categories.map_categories``; ties to the first by name).

    Called only after the categories stage is final, so the benchmark never shapes the labels.
    """
    from mneme_core.interp.categories import category_subject_similarity, map_categories

    mneme = sorted({str(c) for c in mneme_categories})
    bench = sorted({str(c) for c in benchmark_categories})
    if not mneme:
        return pd.DataFrame(
            {
                "mneme_category": pd.Series([], dtype=str),
                "benchmark_category": pd.Series([], dtype=str),
                "similarity": pd.Series([], dtype=float),
            }
        )
    nearest = map_categories(mneme, bench, embedder)
    sims = category_subject_similarity(mneme, bench, embedder)
    return pd.DataFrame(
        {
            "mneme_category": mneme,
            "benchmark_category": [nearest[c] for c in mneme],
            "similarity": [float(sims.loc[c, nearest[c]]) for c in mneme],
        }
    )


def shared_names(mneme_categories: Collection[str], benchmark_categories: Collection[str]) -> list[str]:
    """MNEME category names that *are* benchmark names (case and ``_`` ignored).

    Why: if categories were labelled from the benchmark's own taxonomy (e.g. the built-in
    ``mmlu`` list), the mapping is the identity and P is no longer an independent
    prediction. The record carries this list so a reader can see it.
    """
    bench = {humanize(b).lower() for b in benchmark_categories}
    return sorted({c for c in mneme_categories if humanize(str(c)).lower() in bench})


def attributed_latents(latents: pd.DataFrame, latent_direction: LatentDirection = "suppressed") -> pd.DataFrame:
    """Latents attributed in the configured direction that carry a category."""
    need = {"latent", "attribution", "shift", "category"}
    missing = sorted(need - set(latents.columns))
    if missing:
        stage = "categories" if "category" in missing else "diff"
        raise EvaluationError(f"latents table lacks {missing}; run the {stage} stage before evaluate")
    kinds = {"suppressed": {"suppressed"}, "amplified": {"amplified"}, "both": {"suppressed", "amplified"}}
    if latent_direction not in kinds:
        raise ValueError(f"latent_direction must be one of {sorted(kinds)}, got {latent_direction!r}")
    cat = latents["category"].astype("string").str.strip()
    keep = latents["attribution"].isin(kinds[latent_direction]) & cat.notna() & (cat != "")
    return latents.loc[keep, ["latent", "shift", "category"]].assign(category=cat[keep].astype(str))


def eligible_latents(latents: pd.DataFrame) -> pd.DataFrame:
    """The pool an attribution is drawn from: categorised latents with enough evidence to
    be labelled at all (``beta_state`` other than ``too_few_fires``, where the diff stage
    wrote it)."""
    cat = latents["category"].astype("string").str.strip()
    keep = cat.notna() & (cat != "")
    if "beta_state" in latents.columns:
        keep &= latents["beta_state"] != "too_few_fires"
    return latents.loc[keep, ["latent", "category"]].assign(category=cat[keep].astype(str))


def category_scores(
    latents: pd.DataFrame,
    mapping: pd.DataFrame | Mapping[str, str],
    benchmark_categories: Sequence[str],
    *,
    latent_direction: LatentDirection = "suppressed",
    score: PredictScore = "enrichment",
) -> pd.DataFrame:
    """Per benchmark category: ``n_latents, n_pool, expected, enrichment_p, score,
    total_shift, mneme_categories, latents`` (``rank`` adds ``rank_p, support,
    ranked_latents``).

    ``n_pool`` = eligible latents mapped there; ``expected`` = the attributed latents it
    would hold if attribution ignored meaning (``n · n_pool / N``); ``enrichment_p`` = one-sided
    hypergeometric test of holding at least ``n_latents``. Every latent counts once, so no
    single latent can dominate a category. Every benchmark category gets a row (zeros
    where no latent maps to it). ``latents`` lists up to MAX_LATENTS_LISTED attributed ids,
    largest |shift| first, whatever the score (what ``mneme confirm`` ablates).

    ``rank`` needs no label: every eligible latent's shift in the reading's direction
    (:func:`moved_by`) enters a one-sided Mann–Whitney test of "this category's latents
    moved more than the rest of the pool" — the dictionary-free baseline's test, on latents
    instead of contexts. It can see a change spread thinly over a category's latents, none
    of which clears the band alone; ranks keep any one latent's weight bounded.
    ``support`` (what the prediction's minimum counts) is the category's ranked latents;
    ``ranked_latents`` those that moved in the reading's direction, furthest first,
    attributed or not.
    """
    if isinstance(mapping, pd.DataFrame):
        mapping = dict(zip(mapping["mneme_category"], mapping["benchmark_category"]))
    pool = eligible_latents(latents)
    pool_bench = pool["category"].map(mapping)
    att = attributed_latents(latents, latent_direction)
    att = att.assign(abs_shift=att["shift"].abs().fillna(0.0), benchmark=att["category"].map(mapping))
    unknown = set(att["benchmark"].dropna()) - set(benchmark_categories)
    if unknown:
        raise EvaluationError(f"mapping points to categories not in the benchmark: {sorted(unknown)[:5]}")
    att = att.dropna(subset=["benchmark"]).sort_values(["abs_shift", "latent"], ascending=[False, True])
    n_total, n_att = int(pool_bench.notna().sum()), int(len(att))
    rows = []
    for bcat in sorted(benchmark_categories):
        sub = att[att["benchmark"] == bcat]
        n_pool = max(int((pool_bench == bcat).sum()), len(sub))
        p = float(stats.hypergeom.sf(len(sub) - 1, max(n_total, n_att), n_pool, n_att)) if len(sub) else 1.0
        rows.append(
            {
                "category": bcat,
                "n_latents": int(len(sub)),
                "n_pool": n_pool,
                "expected": n_att * n_pool / n_total if n_total else 0.0,
                "enrichment_p": p,
                "total_shift": float(sub["abs_shift"].sum()),
                "mneme_categories": sorted(sub["category"].unique().tolist()),
                "latents": [int(x) for x in sub["latent"].head(MAX_LATENTS_LISTED)],
            }
        )
    df = pd.DataFrame(
        rows,
        columns=[
            "category",
            "n_latents",
            "n_pool",
            "expected",
            "enrichment_p",
            "total_shift",
            "mneme_categories",
            "latents",
        ],
    )
    if score not in PREDICT_SCORES:
        raise ValueError(f"predict_score must be one of {PREDICT_SCORES}, got {score!r}")
    if score == "rank":
        ranked = _rank_test(latents, pool.assign(benchmark=pool_bench), latent_direction, df["category"])
        df = df.merge(ranked, on="category", how="left")
        df.insert(5, "score", -np.log10(df["rank_p"].clip(lower=1e-300)))
        return df
    if score == "enrichment":
        df.insert(5, "score", -np.log10(df["enrichment_p"].clip(lower=1e-300)))
        return df
    mass = df["total_shift"] if score == "shift" else df["n_latents"].astype(float)
    total = float(mass.sum())
    df.insert(5, "score", mass / total if total > 0 else 0.0)
    return df


def moved_by(latents: pd.DataFrame, latent_direction: LatentDirection) -> pd.Series:
    """How far each latent moved in the reading's direction, for the ``rank`` score:
    ``shift`` for amplified, ``−shift`` for suppressed, ``|shift|`` for both. A latent
    absent in one model (β ≤ 0 there, so its shift is NaN) that the attribution rule
    labelled moved furthest of all in the direction it went (+inf) and least in the other
    (−inf); one it did not label (β ≤ 0 can be noise where the latent is faint in both)
    keeps its NaN and is left out, as is any latent whose shift is undefined."""
    shift = pd.to_numeric(latents["shift"], errors="coerce").astype(np.float64)
    state = latents["beta_state"] if "beta_state" in latents.columns else pd.Series("present", index=latents.index)
    value = shift.abs() if latent_direction == "both" else (1.0 if latent_direction == "amplified" else -1.0) * shift
    went_up = -np.inf if latent_direction == "suppressed" else np.inf  # present in the fine-tuned model only
    went_down = -np.inf if latent_direction == "amplified" else np.inf  # present in the base only
    labelled = latents["attribution"].isin(["amplified", "suppressed"])
    return value.mask((state == "absent_base") & labelled, went_up).mask((state == "absent_ft") & labelled, went_down)


def _rank_test(
    latents: pd.DataFrame, pool: pd.DataFrame, latent_direction: LatentDirection, categories: pd.Series
) -> pd.DataFrame:
    """``category, rank_p, support, ranked_latents`` of the ``rank`` score (see
    :func:`category_scores`). ``pool`` holds the eligible latents with their ``benchmark``
    category; a latent mapped to none is left out, as the enrichment test leaves it out.
    Identical models give every latent the same value (0), hence p = 1 everywhere."""
    from mneme_core.analysis.actdiff import moved_more_p

    pool = pool[pool["benchmark"].notna()]
    value = moved_by(latents.set_index("latent"), latent_direction).reindex(pool["latent"].to_numpy())
    keep = value.notna().to_numpy()
    ids = pool["latent"].to_numpy()[keep]
    bench = pool["benchmark"].to_numpy()[keep]
    v = value.to_numpy(np.float64)[keep]
    finite = v[np.isfinite(v)]
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 0.0)
    v = np.clip(v, lo - 1.0, hi + 1.0)  # ±inf as the extreme ranks, which is all the test reads
    rows = []
    for cat in categories:
        inside = bench == cat
        moved = inside & (v > 0)
        order = np.argsort(-v[moved], kind="stable")[:MAX_LATENTS_LISTED]
        rows.append(
            {
                "category": cat,
                "rank_p": moved_more_p(v, inside),
                "support": int(inside.sum()),
                "ranked_latents": [int(x) for x in ids[moved][order]],
            }
        )
    return pd.DataFrame(rows, columns=["category", "rank_p", "support", "ranked_latents"])


def default_predict_threshold(scores: pd.DataFrame, score: str = "enrichment", alpha: float = 0.05) -> float:
    """Enrichment and rank: ``−log10(alpha / K)``, the one-sided test at ``alpha``
    Bonferroni-corrected over the K benchmark categories (so a method attributing at random
    predicts any category with probability ≤ alpha). Shares: the mean share, 1 / K."""
    if not len(scores):
        return 0.0
    if score in TESTED_SCORES:
        return float(-np.log10(alpha / len(scores)))
    return 1.0 / len(scores)


def predict(scores: pd.DataFrame, threshold: float, min_latents: int = 1) -> set[str]:
    """Predicted categories: ``score >= threshold``, ``score > 0`` (ties are predicted) and
    at least ``min_latents`` latents of support (attributed ones; for ``rank``, ranked ones:
    one latent is an anecdote). Scores without a ``support`` column (all but rank, and
    records from before it) count ``n_latents``."""
    s = scores["score"].to_numpy(np.float64)
    support = scores["support"] if "support" in scores.columns else scores["n_latents"]
    return set(scores.loc[(s >= threshold) & (s > 0) & (support >= min_latents), "category"])


# --------------------------------------------------------------------------- metrics


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _confusion_metrics(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> dict[str, np.ndarray]:
    """All metrics from confusion counts (arrays, so the random baseline is one call);
    NaN = undefined."""
    recall = _ratio(tp, tp + fn)
    spec = _ratio(tn, tn + fp)
    return {
        "accuracy": recall,
        "precision": _ratio(tp, tp + fp),
        "recall": recall,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "specificity": spec,
        "balanced_accuracy": (recall + spec) / 2,
    }


def _check_sets(
    T: Collection[str], P: Collection[str], universe: Collection[str]
) -> tuple[set[str], set[str], set[str]]:
    T, P, U = set(T), set(P), set(universe)
    for name, s in (("degraded set T", T), ("predicted set P", P)):
        if not s <= U:
            raise ValueError(f"{name} holds categories outside the universe: {sorted(s - U)[:5]}")
    return T, P, U


def _none_if_nan(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def metrics(T: Collection[str], P: Collection[str], universe: Collection[str]) -> dict[str, Any]:
    """Counts and metrics of predicted P against degraded T; undefined ratios are None."""
    T, P, U = _check_sets(T, P, universe)
    tp, fp, fn = len(T & P), len(P - T), len(T - P)
    tn = len(U) - tp - fp - fn
    vals = _confusion_metrics(*(np.array([x], dtype=np.float64) for x in (tp, fp, fn, tn)))
    out: dict[str, Any] = {
        "n_universe": len(U),
        "n_degraded": len(T),
        "n_predicted": len(P),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }
    out.update({k: _none_if_nan(float(v[0])) for k, v in vals.items()})
    return out


def threshold_curve(
    scores: pd.DataFrame, T: Collection[str], universe: Collection[str] | None = None, min_latents: int = 1
) -> pd.DataFrame:
    """Metrics for every distinct prediction threshold, from "predict nothing" (a threshold
    just above the largest score) down to the smallest positive score."""
    U = set(scores["category"]) if universe is None else set(universe)
    s = scores["score"].to_numpy(np.float64)
    positive = np.unique(s[s > 0])[::-1]
    top = float(np.nextafter(positive[0], np.inf)) if len(positive) else 0.0
    rows = []
    for thr in [top, *map(float, positive)]:
        P = predict(scores, thr, min_latents)
        m = metrics(T, P, U)
        rows.append(
            {
                "threshold": thr,
                "n_predicted": m["n_predicted"],
                "tp": m["tp"],
                "fp": m["fp"],
                **{k: m[k] for k in METRIC_NAMES},
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- baselines


def random_baseline(
    T: Collection[str], universe: Collection[str], *, draws: int = 1000, seed: int = 0, p: float = 0.5
) -> dict[str, Any]:
    """Each category predicted independently with probability ``p``; per metric the mean
    over draws where it is defined, the 2.5–97.5 percentile range and that draw count."""
    T, _, U = _check_sets(T, set(), universe)
    cats = sorted(U)
    t_K = np.array([c in T for c in cats])
    P_DK = np.random.default_rng(seed).random((draws, len(cats))) < p
    tp = (P_DK & t_K).sum(1).astype(np.float64)
    fp = (P_DK & ~t_K).sum(1).astype(np.float64)
    fn = t_K.sum() - tp
    tn = (~t_K).sum() - fp
    out: dict[str, Any] = {"draws": draws, "seed": seed, "p": p, "mean_set_size": float(P_DK.sum(1).mean())}
    for name, v in _confusion_metrics(tp, fp, fn, tn).items():
        ok = v[~np.isnan(v)]
        out[name] = (
            {
                "mean": float(ok.mean()),
                "low": float(np.percentile(ok, 2.5)),
                "high": float(np.percentile(ok, 97.5)),
                "n_defined": int(len(ok)),
            }
            if len(ok)
            else {"mean": None, "low": None, "high": None, "n_defined": 0}
        )
    return out


def naive_baseline(description: str, universe: Collection[str], k: int, embedder: Any = None) -> list[str]:
    """The ``k`` categories whose names are most similar to the intervention description,
    most similar first (ties by name)."""
    cats = sorted(set(universe))
    if k <= 0 or not cats:
        return []
    if embedder is None:
        from mneme_core.common.embeddings import get_embedder

        embedder = get_embedder()
    sim = embedder.encode([humanize(c) for c in cats]) @ embedder.encode([description])[0]
    order = sorted(range(len(cats)), key=lambda i: (-round(float(sim[i]), 6), cats[i]))
    return [cats[i] for i in order[:k]]


# --------------------------------------------------------------------------- whole evaluation


def evaluate(
    benchmark: pd.DataFrame,
    latents: pd.DataFrame,
    cfg: EvaluationConfig,
    *,
    mapping: Mapping[str, str] | None = None,
    embedder: Any = None,
    context_diffs: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Benchmark table with T, and the evaluation record (JSON-able) with P, metrics,
    baselines, the threshold curve and the category mapping. Pure: no files touched.

    Both directions are evaluated (``record["directions"]``, see the module docstring); the
    top-level ``T``, ``P``, ``metrics``, ... are the degraded direction's, as they were before
    there was a second one. The table holds the degraded direction's ``drop, ci_low, ci_high,
    p_value, degraded`` and the improved one's ``gain, gain_ci_low, gain_ci_high,
    gain_p_value, improved``.

    ``context_diffs`` (``mneme_core.analysis.actdiff``; labelled contexts with their activation
    difference) adds the dictionary-free baseline ``activation_diff``."""
    senses: dict[str, Direction] = {"degraded": cfg.direction, "improved": opposite(cfg.direction)}
    tables = {
        name: degraded_table(
            benchmark,
            direction=change,
            threshold=cfg.degrade_threshold,
            alpha=cfg.significance,
            test=cfg.significance_test,
            bootstrap_draws=cfg.bootstrap_draws,
            seed=cfg.seed,
        )
        for name, change in senses.items()
    }
    universe = sorted(tables["degraded"]["category"])
    latent_directions = {"degraded": cfg.latent_direction, "improved": cfg.improved_latent_direction}
    attributed = attributed_latents(latents, cfg.latent_direction)
    mneme_cats = sorted(attributed["category"].unique().tolist())
    if mapping is None:
        # every category of the eligible pool, not only the attributed ones: the enrichment
        # test compares a category's attributed latents with its share of the whole pool
        improved_cats = set(attributed_latents(latents, cfg.improved_latent_direction)["category"])
        mapping_df = category_mapping(
            sorted(set(eligible_latents(latents)["category"]) | set(mneme_cats) | improved_cats), universe, embedder
        )
    else:
        mapping_df = pd.DataFrame(
            {"mneme_category": list(mapping), "benchmark_category": list(mapping.values()), "similarity": np.nan}
        )
    mapping = dict(zip(mapping_df["mneme_category"], mapping_df["benchmark_category"]))
    actdiff = _activation_diff_prediction(context_diffs, universe, cfg, embedder)
    directions = {
        name: _direction_record(
            tables[name],
            latents,
            mapping,
            universe,
            cfg,
            change=change,
            latent_direction=latent_directions[name],
            activation_diff=actdiff,
            embedder=embedder,
        )
        for name, change in senses.items()
    }
    lat_counts = attributed["category"].value_counts()
    top = copy.deepcopy({k: v for k, v in directions["degraded"].items() if k in DIRECTION_KEYS})
    record = {
        **{k: top[k] for k in ("direction", "latent_direction", "thresholds")},
        "universe": universe,
        **{k: top[k] for k in ("T", "P", "category_scores", "metrics", "curve")},
        "mapping": _records(
            mapping_df.assign(n_latents=[int(lat_counts.get(c, 0)) for c in mapping_df["mneme_category"]])
        ),
        "shared_names": shared_names(mneme_cats, universe),
        "directions": directions,
    }
    gain = tables["improved"][["category", *DIRECTION_COLUMNS["degraded"].values()]].rename(
        columns=dict(zip(DIRECTION_COLUMNS["degraded"].values(), DIRECTION_COLUMNS["improved"].values()))
    )
    return tables["degraded"].merge(gain, on="category", how="left", validate="one_to_one"), record


def opposite(direction: Direction) -> Direction:
    """The other sense of change: the improved direction of a ``drop`` study is a ``rise``."""
    if direction not in ("drop", "rise"):
        raise ValueError(f"direction must be 'drop' or 'rise', got {direction!r}")
    return "rise" if direction == "drop" else "drop"


def _direction_record(
    table: pd.DataFrame,
    latents: pd.DataFrame,
    mapping: Mapping[str, str],
    universe: list[str],
    cfg: EvaluationConfig,
    *,
    change: Direction,
    latent_direction: LatentDirection,
    activation_diff: dict[str, Any],
    embedder: Any,
) -> dict[str, Any]:
    """One direction: T from ``table`` (:func:`degraded_table` in that direction's sense of
    change), P from the latents attributed in ``latent_direction``, metrics, baselines, curve."""
    T = degraded_set(table)
    scores = category_scores(latents, mapping, universe, latent_direction=latent_direction, score=cfg.predict_score)
    thr = (
        cfg.predict_threshold
        if cfg.predict_threshold > 0
        else default_predict_threshold(scores, cfg.predict_score, cfg.significance)
    )
    P = predict(scores, thr, cfg.predict_min_latents)
    methods: dict[str, Any] = {
        "mneme": {**metrics(T, P, universe), "set": sorted(P)},
        "random": random_baseline(T, universe, draws=cfg.random_draws, seed=cfg.seed),
        "oracle": {**metrics(T, T, universe), "set": sorted(T)},
    }
    if cfg.intervention_description.strip():
        naive = naive_baseline(cfg.intervention_description, universe, len(P), embedder)
        methods["naive"] = {**metrics(T, naive, universe), "set": naive, "description": cfg.intervention_description}
    else:
        methods["naive"] = {"skipped": "evaluation.intervention_description is empty"}
    if "set" in activation_diff:
        methods["activation_diff"] = {**metrics(T, activation_diff["set"], universe), **activation_diff}
    else:
        methods["activation_diff"] = dict(activation_diff)
    return {
        "direction": change,
        "latent_direction": latent_direction,
        "thresholds": {
            "degrade_threshold": cfg.degrade_threshold,
            "significance": cfg.significance,
            "significance_test": str(table["test"].iloc[0]),
            "predict_score": cfg.predict_score,
            "predict_threshold": thr,
            "predict_min_latents": cfg.predict_min_latents,
            "predict_threshold_rule": "configured"
            if cfg.predict_threshold > 0
            else (
                "-log10(significance / n_categories): Bonferroni over the benchmark categories"
                if cfg.predict_score in TESTED_SCORES
                else "mean share (1 / n_categories)"
            ),
        },
        "T": sorted(T),
        "P": sorted(P),
        "category_scores": scores.assign(predicted=scores["category"].isin(P)).to_dict(orient="records"),
        "metrics": methods,
        "curve": _records(threshold_curve(scores, T, universe, cfg.predict_min_latents)),
        "activation_diff_note": ACTIVATION_DIFF_NOTE,
    }


def _activation_diff_prediction(
    diffs: pd.DataFrame | None, universe: list[str], cfg: EvaluationConfig, embedder: Any
) -> dict[str, Any]:
    """The dictionary-free baseline's predicted set and per-category table (or why it is
    absent). It has no direction: each direction scores this one prediction against its T."""
    from mneme_core.analysis.actdiff import predict_from_diffs

    if diffs is None or diffs.empty:
        return {"skipped": "no context_diffs.parquet: the categories stage writes it when the activation store exists"}
    cats = sorted(diffs["category"].astype(str).unique().tolist())
    mapping = category_mapping(cats, universe, embedder)
    per_cat, P = predict_from_diffs(
        diffs.assign(category=diffs["category"].astype(str)),
        dict(zip(mapping["mneme_category"], mapping["benchmark_category"])),
        universe,
        alpha=cfg.significance,
        min_contexts=cfg.predict_min_latents,
        min_ratio=cfg.baseline_min_ratio,
    )
    rule = "Mann-Whitney: contexts of the category changed more than the rest, p < significance / n_categories"
    if cfg.baseline_min_ratio > 0.0:
        rule += f", mean change >= {cfg.baseline_min_ratio:.2f} x the rest's"
    return {
        "set": sorted(P),
        "n_contexts": int(len(diffs)),
        "min_ratio": cfg.baseline_min_ratio,
        "rule": rule,
        "per_category": _records(per_cat),
    }


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame rows as JSON-safe dicts (NaN -> None: JSON has no NaN)."""
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in df.to_dict(orient="records")
    ]


class DirectionUnavailable(EvaluationError):
    """The run's ``evaluation.json`` predates the second direction; the message says what to re-run."""


def rerun_message(direction: str, run_path: str | Path | None = None) -> str:
    """What to say when a record has no ``directions`` (an evaluation made before MNEME evaluated both)."""
    run = str(run_path) if run_path is not None else "RUN"
    bench = f"{run}/benchmark.parquet" if run_path is not None else "FILE"
    return (
        f"This run's evaluation was made before MNEME evaluated the {direction} direction, so it holds only the "
        f"degraded one. Re-run `mneme evaluate {run} --benchmark {bench}` to add it."
    )


def direction_record(
    record: Mapping[str, Any], direction: str = "degraded", run_path: str | Path | None = None
) -> dict[str, Any]:
    """One direction's sub-record of an evaluation record.

    An older record (no ``directions``) still gives "degraded": its top-level keys are that
    direction. "improved" then raises :class:`DirectionUnavailable` with :func:`rerun_message`.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {list(DIRECTIONS)}, got {direction!r}")
    sub = (record.get("directions") or {}).get(direction)
    if sub is not None:
        return sub
    if direction == "degraded":
        return {k: record[k] for k in DIRECTION_KEYS if k in record}
    raise DirectionUnavailable(rerun_message(direction, run_path))


def per_category_table(run: Run | str | Path, direction: str = "degraded") -> pd.DataFrame:
    """One row per benchmark category for the dashboard: scores, the direction's change, CI,
    p-value and membership of its T (``drop ... degraded`` or ``gain ... improved``, see
    DIRECTION_COLUMNS), and MNEME's aggregate for that direction (n_latents, total_shift,
    score, predicted, latents); largest change first."""
    run = run if isinstance(run, Run) else Run(run)
    bench, record = run.benchmark, run.evaluation
    if bench is None or record is None:
        raise EvaluationError(f"{run.path} has no evaluation yet; run `mneme evaluate {run.path} --benchmark FILE`")
    sub = direction_record(record, direction, run.path)
    cols = DIRECTION_COLUMNS[direction]
    if cols["member"] not in bench.columns:
        raise DirectionUnavailable(rerun_message(direction, run.path))
    scores = pd.DataFrame.from_records(sub["category_scores"])
    table = bench.merge(scores, on="category", how="left")
    return table.sort_values(cols["change"], ascending=False).reset_index(drop=True)


def _runner_benchmark(cfg: StudyConfig, run_path: Path, questions: str, progress: bool) -> pd.DataFrame:
    """Score both models of the study on a local MC file (resumable via the run's cache)."""
    from mneme_core.benchmarks.mc_runner import load_mc_items, score_pair
    from mneme_core.collect.models import load_model_pair

    ev = cfg.evaluation
    items = load_mc_items(questions, limit_per_category=ev.runner_limit_per_category)
    pair = load_model_pair(cfg.models)
    return score_pair(
        (pair.base, pair.tokenizer),
        (pair.ft, pair.tokenizer),
        items,
        batch_size=ev.runner_batch_size,
        cache_dir=run_path / "benchmark_cache",
        style=ev.runner_style,
        progress=progress,
    )


def run_stage(cfg: StudyConfig, run_path: Path, *, progress: bool = True) -> dict[str, Any]:
    """Evaluate stage: benchmark in, ``benchmark.parquet`` + ``evaluation.json`` out."""
    run_path = Path(run_path)
    spec = cfg.evaluation.benchmark.strip()
    if spec.startswith(RUNNER_PREFIX):
        bench, source = _runner_benchmark(cfg, run_path, spec[len(RUNNER_PREFIX) :], progress), spec
    else:
        bench, source = load_benchmark(spec, run_path)
    latents_path = run_path / "latents.parquet"
    if not latents_path.is_file():
        raise EvaluationError(f"{run_path} has no latents.parquet; run the diff and categories stages first")
    from mneme_core.analysis.actdiff import CONTEXT_DIFFS_FILE
    from mneme_core.common.embeddings import get_embedder

    diffs_path = run_path / CONTEXT_DIFFS_FILE
    table, record = evaluate(
        bench,
        pd.read_parquet(latents_path),
        cfg.evaluation,
        embedder=get_embedder(cfg.interpret.embedding_model, cfg.interpret.embedding_dtype),
        context_diffs=pd.read_parquet(diffs_path) if diffs_path.is_file() else None,
    )
    record["benchmark_source"] = source
    write_parquet(run_path / "benchmark.parquet", table)
    atomic_write_json(run_path / "evaluation.json", record)
    add_provenance(run_path, [{"kind": "benchmark", "source": source}])
    m, improved = record["metrics"], record["directions"]["improved"]
    return {
        "n_categories": len(record["universe"]),
        "n_degraded": len(record["T"]),
        "n_predicted": len(record["P"]),
        "n_improved": len(improved["T"]),
        "n_predicted_improved": len(improved["P"]),
        "accuracy_improved": improved["metrics"]["mneme"]["accuracy"],
        **{k: m["mneme"][k] for k in ("accuracy", "precision", "recall", "f1", "balanced_accuracy")},
        "random_accuracy_mean": m["random"]["accuracy"]["mean"],
        "naive_accuracy": m["naive"].get("accuracy"),
        "activation_diff_accuracy": m["activation_diff"].get("accuracy"),
    }
