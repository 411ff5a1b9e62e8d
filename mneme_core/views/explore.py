"""Filtering, sorting and navigation over the latents table (pure functions).

The explorer page turns widget values into a :class:`FilterSpec` and calls
:func:`apply_filters`; the latent page uses the resulting order for previous / next.
Everything works on plain DataFrames, so it is tested without a browser and is fast at
the paper's 131,072 latents (vectorised masks, one ``argsort``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import pandas as pd

from mneme_core.common.config import DiffingConfig
from mneme_core.evaluation import confirmation_view as cv

# Columns offered as label filters / range sliders, when the run has them.
LABEL_COLUMNS = ("attribution", "beta_state", "label_by_norm", "category", "fires_most_in", "mark")
RANGE_COLUMNS = (
    "rel_norm",
    "shift",
    "nu_err",
    "nu_recon",
    "dec_cos",
    "freq",
    "n_fires",
    "max_act",
    "explanation_score",
    "fires_most_share",
)
# ``beta_state`` of a latent under the diff stage's evidence floor (diffing.BETA_STATES[0]),
# and how the views name its attribution.
UNDER_FLOOR = "too_few_fires"
TOO_FEW_FIRES = "too few fires to tell"
ATTRIBUTION_ORDER = ("suppressed", "unchanged", TOO_FEW_FIRES, "amplified")
# What the explorer shows by default, in this order (others are one click away).
DEFAULT_COLUMNS = (
    "latent",
    "description",
    "category",
    "fires_most_in",
    "attribution",
    "label_by_norm",
    "rel_norm",
    "shift",
    "dec_cos",
    "freq",
    "max_act",
    "explanation_score",
    "mark",
)


@dataclass(frozen=True)
class FilterSpec:
    """Every explorer filter. Empty = no filter on that column."""

    labels: Mapping[str, Sequence[str]] = field(default_factory=dict)  # column -> allowed values
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # column -> [lo, hi]
    text: str = ""  # case-insensitive substring over descriptions
    sort_by: str = "latent"
    ascending: bool = True


def label_options(df: pd.DataFrame) -> dict[str, list[str]]:
    """For each label column present, its values (most frequent first)."""
    out: dict[str, list[str]] = {}
    for col in LABEL_COLUMNS:
        if col in df.columns:
            values = df[col].fillna("").astype(str)
            out[col] = [v for v in values.value_counts().index.tolist()]
    return out


def range_bounds(df: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """For each numeric range column present with finite values, its [min, max]."""
    out: dict[str, tuple[float, float]] = {}
    for col in RANGE_COLUMNS:
        if col in df.columns:
            values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype="float64")
            values = values[np.isfinite(values)]
            if values.size:
                out[col] = (float(values.min()), float(values.max()))
    return out


def filter_mask(df: pd.DataFrame, spec: FilterSpec) -> np.ndarray:
    """Boolean mask of the rows that pass every filter in ``spec``."""
    mask = np.ones(len(df), dtype=bool)
    for col, allowed in spec.labels.items():
        if col in df.columns and allowed:
            mask &= df[col].fillna("").astype(str).isin(list(allowed)).to_numpy()
    for col, (lo, hi) in spec.ranges.items():
        if col in df.columns:
            values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype="float64")
            with np.errstate(invalid="ignore"):
                mask &= (values >= lo) & (values <= hi)
    text = spec.text.strip()
    if text and "description" in df.columns:
        mask &= df["description"].fillna("").astype(str).str.contains(text, case=False, regex=False).to_numpy()
    return mask


def filtered_order(df: pd.DataFrame, spec: FilterSpec) -> np.ndarray:
    """Row positions that pass ``spec``, in display order.

    Works on positions, not on a copied table: at 131k rows sorting a whole DataFrame
    (description strings included) costs more than the filter; the page then takes only
    the rows it shows.
    """
    rows = np.flatnonzero(filter_mask(df, spec))
    return rows[sort_positions(df, rows, spec.sort_by, spec.ascending)]


def sort_positions(df: pd.DataFrame, rows: np.ndarray, by: str, ascending: bool = True) -> np.ndarray:
    """Argsort of ``rows`` by column ``by`` (missing values last), ties by latent id."""
    latent = df["latent"].to_numpy()[rows]
    if by not in df.columns or by == "latent":
        order = np.argsort(latent, kind="stable")
        return order if by != "latent" or ascending else order[::-1]
    values = df[by].iloc[rows]
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        key = values.to_numpy(dtype="float64", na_value=np.nan)
        missing = np.isnan(key)
        key = np.where(missing, 0.0, key if ascending else -key)
    else:
        codes, _ = pd.factorize(values.astype("string"), sort=True)
        missing = codes < 0
        key = codes if ascending else -codes
    return np.lexsort((latent, key, missing))


def apply_filters(df: pd.DataFrame, spec: FilterSpec) -> pd.DataFrame:
    """Rows passing ``spec``, sorted by ``spec.sort_by`` (missing last), ties by latent id."""
    return df.iloc[filtered_order(df, spec)]


def is_active(spec: FilterSpec, bounds: Mapping[str, tuple[float, float]]) -> bool:
    """Whether ``spec`` actually narrows anything (a slider at its full range does not)."""
    if spec.text.strip() or any(v for v in spec.labels.values()):
        return True
    return any(tuple(r) != tuple(bounds.get(c, r)) for c, r in spec.ranges.items())


def neighbours(order: Sequence[int] | np.ndarray, latent: int) -> tuple[int | None, int | None]:
    """Previous and next latent around ``latent`` in ``order`` (None at the ends or if absent)."""
    arr = np.asarray(order)
    hits = np.flatnonzero(arr == latent)
    if hits.size == 0:
        return None, None
    i = int(hits[0])
    prev = int(arr[i - 1]) if i > 0 else None
    nxt = int(arr[i + 1]) if i + 1 < arr.size else None
    return prev, nxt


def latent_url(run: str | Path, latent: int, page: str = "latent") -> str:
    """Relative URL of a latent's page that carries the run, so it can be shared."""
    return f"{page}?{urlencode({'run': str(run), 'latent': int(latent)})}"


def with_links(df: pd.DataFrame, run: str | Path, page: str = "latent") -> pd.DataFrame:
    """The table with an ``open`` column of links to each latent's page."""
    prefix = f"{page}?{urlencode({'run': str(run)})}&latent="
    return df.assign(open=prefix + df["latent"].astype(str))


def latent_row(df: pd.DataFrame, latent: int) -> pd.Series | None:
    """One latent's row, found by binary search (the table is sorted by latent)."""
    ids = df["latent"].to_numpy()
    i = int(np.searchsorted(ids, latent))
    if i < ids.size and ids[i] == latent:
        return df.iloc[i]
    hits = np.flatnonzero(ids == latent)  # an unsorted table still works, just slower
    return df.iloc[int(hits[0])] if hits.size else None


def similar_latents(dec_FD: np.ndarray, latent: int, k: int = 10) -> pd.DataFrame:
    """Latents whose (concatenated, unit-normalised) decoder rows are closest in cosine.

    ``dec_FD`` holds one row per latent: both models' decoder rows side by side, so two
    latents are similar when they write the same direction into both models.
    """
    if not 0 <= latent < dec_FD.shape[0]:
        raise IndexError(f"latent {latent} out of range 0..{dec_FD.shape[0] - 1}")
    norms = np.linalg.norm(dec_FD, axis=1)
    query = dec_FD[latent] / max(float(norms[latent]), 1e-12)
    cos = (dec_FD @ query) / np.maximum(norms, 1e-12)
    cos[latent] = -np.inf
    k = min(k, dec_FD.shape[0] - 1)
    top = np.argpartition(-cos, k)[:k] if k < cos.size else np.arange(cos.size)
    top = top[np.argsort(-cos[top])]
    return pd.DataFrame({"latent": top.astype(np.int64), "cosine": cos[top].astype(np.float64)})


def diffing_settings(manifest: Mapping[str, object]) -> DiffingConfig:
    """The diff stage's settings as the run recorded them (τ, z, bands, evidence floor), the
    defaults where an older manifest did not record one: what the figures mark must be the
    rule the labels were made with."""
    config = manifest.get("config")
    recorded = config.get("diffing", {}) if isinstance(config, dict) else {}
    return DiffingConfig(**{f.name: recorded[f.name] for f in fields(DiffingConfig) if f.name in recorded})


def precision_note(manifest: Mapping[str, object]) -> str | None:
    """Where a run computed in less than float32 (the models' dtype, collection's forward
    pass, the cross-coder's encoder, the sentence embedder), one line saying so; None for a
    float32 run. bf16 moves the activations by about 1% and the embeddings by less
    (docs/DIFFING.md), which an auditor comparing runs should see."""
    config = manifest.get("config")
    if not isinstance(config, dict):
        return None
    models = config.get("models", {})
    loaded = {str(models.get(m, {}).get("dtype", "float32")) for m in ("base", "ft") if isinstance(models.get(m), dict)}
    forward = str(config.get("activations", {}).get("forward_dtype", "") or "")
    collected = {forward} if forward else loaded
    encoder = str(config.get("training", {}).get("dtype", "float32"))
    parts = []
    if collected - {"float32"}:
        parts.append(f"collected in {' / '.join(sorted(collected))}")
    if encoder != "float32":
        parts.append(f"cross-coder encoder in {encoder}")
    embedder = str(config.get("interpret", {}).get("embedding_dtype", "float32"))
    if embedder != "float32":
        parts.append(f"sentence embedder in {embedder}")
    return " · ".join(parts) or None


def attribution_counts(df: pd.DataFrame) -> dict[str, int]:
    """Latents per attribution as the views name them (:func:`shown_attribution`), in
    display order; the decoder-norm labels are another question (:func:`norm_label_counts`)."""
    if "attribution" not in df.columns:
        return {}
    shown = df["attribution"].astype(object).where(~_under_floor(df), TOO_FEW_FIRES)
    counts = shown.value_counts()
    order = [k for k in ATTRIBUTION_ORDER if k in counts.index] + [
        k for k in counts.index if k not in ATTRIBUTION_ORDER
    ]
    return {str(k): int(counts[k]) for k in order}


def norm_label_counts(df: pd.DataFrame) -> dict[str, int]:
    """Latents per relative-decoder-norm band (base_only / ft_only / shared / other)."""
    if "label_by_norm" not in df.columns:
        return {}
    return {str(k): int(v) for k, v in df["label_by_norm"].value_counts().items()}


def shown_attribution(attribution: object, beta_state: object) -> str:
    """One latent's attribution as a reader should see it.

    The diff stage stores ``unchanged`` for a latent under the evidence floor
    (``beta_state == "too_few_fires"``): a default, since no β was compared. Showing it
    as "unchanged" would claim a measurement that was never made.
    """
    return TOO_FEW_FIRES if beta_state == UNDER_FLOOR else str(attribution)


def shift_note(beta_state: object) -> str:
    """Why a latent has no shift, for the place the number would stand."""
    if beta_state == UNDER_FLOOR:
        return "too few firing tokens to compare β"
    return f"β ≤ 0 in a model ({beta_state}): the ratio is undefined"


def _under_floor(df: pd.DataFrame) -> pd.Series:
    if "beta_state" not in df.columns:
        return pd.Series(False, index=df.index)
    return df["beta_state"] == UNDER_FLOOR


def distinct_samples(ctx: pd.DataFrame) -> pd.DataFrame:
    """A latent's contexts without the quantile samples that repeat a top context.

    The top contexts and the quantile samples are drawn independently, so a sample near a
    top activation shows the same passage again. A sample is a repeat when its text equals
    a top context's, or when its centre lies within a window of a top context's centre
    (the rule the contexts stage uses to keep its top windows apart).
    """
    if not len(ctx) or "kind" not in ctx.columns:
        return ctx
    top = (ctx["kind"] == "top").to_numpy()
    texts = ctx["tokens"].map(lambda tokens: "".join(map(str, tokens)))
    repeat = texts.isin(set(texts[top])).to_numpy()
    if "token_index" in ctx.columns and top.any():
        window = int(ctx["tokens"].map(len).max())
        centres = ctx["token_index"].to_numpy(dtype=np.int64)
        repeat = repeat | (np.abs(centres[:, None] - centres[top][None, :]) < window).any(axis=1)
    return ctx[top | ~repeat]


def confirmation_headline(table: pd.DataFrame | None, record: Mapping[str, object] | None) -> str | None:
    """One line on the causal check of the prediction, or None before ``mneme confirm`` ran.

    Precision and recall say whether predicted categories degraded; only the ablation says
    whether the latents behind a prediction cause the drop, so the headline names both.
    """
    if table is None or table.empty:
        return None
    summary = cv.summary(table, dict(record) if record is not None else None)
    predicted = summary[summary["role"] == "predicted"]
    if predicted.empty:
        return "Causal confirmation: no predicted category was tested"
    confirmed = int((predicted["confirmation"] == cv.CONFIRMED).sum())
    stale = int((predicted["confirmation"] == cv.STALE).sum())
    return f"Causal confirmation: {confirmed} of {len(predicted)} predicted categories confirmed" + (
        f" ({stale} {cv.STALE}: the evaluation changed since)" if stale else ""
    )


def dead_fraction(train: Mapping[str, object], diff: Mapping[str, object]) -> tuple[float | None, str]:
    """The share of dead latents and what it was measured on.

    Preferred: latents that fire on none of the diff stage's analysis tokens (the whole
    store). The train stage's figure counts latents silent on its few thousand held-out
    tokens, where a latent firing once in 10,000 tokens looks dead more often than not;
    it is the fallback before the diff stage has run."""
    never, n = diff.get("never_fired"), diff.get("n_latents")
    if isinstance(never, (int, float)) and isinstance(n, (int, float)) and n > 0:
        return float(never) / float(n), f"fire on none of the {fmt(diff.get('n_tokens'))} analysis tokens"
    held = train.get("dead_fraction")
    if isinstance(held, (int, float)):
        return float(held), f"silent on the {fmt(train.get('n_val_tokens'))} held-out tokens"
    return None, ""


def category_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per category: latents, amplified, suppressed, mean shift (most suppressed first)."""
    if "category" not in df.columns or "attribution" not in df.columns:
        return pd.DataFrame(columns=["category", "latents", "amplified", "suppressed", "mean_shift"])
    g = df.assign(category=df["category"].fillna("(none)"))
    table = (
        g.groupby("category")
        .agg(
            latents=("latent", "size"),
            amplified=("attribution", lambda s: int((s == "amplified").sum())),
            suppressed=("attribution", lambda s: int((s == "suppressed").sum())),
            mean_shift=("shift", "mean") if "shift" in g.columns else ("latent", lambda s: math.nan),
        )
        .reset_index()
    )
    return table.sort_values(["suppressed", "amplified"], ascending=False, kind="stable").reset_index(drop=True)


def fmt(value: object, digits: int = 4) -> str:
    """A number as people read it (``digits`` significant digits, whole numbers with
    thousands separators, '—' for missing)."""
    if value is None:
        return "—"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            return "—"
        return f"{float(value) + 0.0:.{digits}g}"  # + 0.0 turns -0.0 (a score of -log10 1) into 0
    return str(value)


def decoder_rows(run_path: str | Path) -> np.ndarray | None:
    """Both models' decoder rows side by side, (F, 2d) float32, or None without a cross-coder.

    Read through the cross-coder's own loader (safetensors only), so the dashboard sees
    the same weights the pipeline trained.
    """
    folder = Path(run_path) / "crosscoder"
    if not (folder / "model.safetensors").is_file():
        return None
    from mneme_core.dictionary.crosscoder import BatchTopKCrossCoder

    model = BatchTopKCrossCoder.from_pretrained(folder)
    W_dec_MFD = model.W_dec.detach().float().cpu().numpy()
    return np.concatenate([W_dec_MFD[0], W_dec_MFD[1]], axis=1)
