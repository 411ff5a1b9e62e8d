"""Which latents to explain, most important first, so a budget is spent where it matters.

Specs (``interpret.latents``):
- ``attributed``: amplified and suppressed latents by |shift| (largest first), then
  ft-only and base-only latents (by decoder norm) by how far their relative norm is from
  0.5;
- ``all``: the attributed ones first (same order), then every other latent by frequency;
- a comma list of labels, e.g. ``amplified,suppressed`` or ``ft_only,base_only``
  (attribution or norm labels), ordered as above;
- a comma list of latent ids, e.g. ``12,507,9000``, in the order given.
Latents that never fired (freq 0) are skipped: there is nothing to explain.
"""

from __future__ import annotations

import pandas as pd

ATTRIBUTION_LABELS = ("amplified", "suppressed", "unchanged")
NORM_LABELS = ("base_only", "ft_only", "shared", "other")


def _require(df: pd.DataFrame, cols: tuple[str, ...], spec: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(
            f"interpret.latents={spec!r} needs latents columns {missing}, written by the diff stage: run it first, "
            f"or give latent ids (e.g. '0,1,2') or 'all'"
        )


def _priority(df: pd.DataFrame) -> pd.Series:
    """Sort key: attributed by |shift| (tier 0), norm-exclusive by |r - 0.5| (tier 1), rest (tier 2)."""
    tier = pd.Series(2, index=df.index)
    strength = pd.Series(0.0, index=df.index)
    if "rel_norm" in df.columns and "label_by_norm" in df.columns:
        exclusive = df["label_by_norm"].isin(["ft_only", "base_only"])
        tier[exclusive] = 1
        strength[exclusive] = (df["rel_norm"] - 0.5).abs()[exclusive]
    if "attribution" in df.columns and "shift" in df.columns:
        attributed = df["attribution"].isin(["amplified", "suppressed"])
        tier[attributed] = 0
        strength[attributed] = df["shift"].abs().fillna(0)[attributed]
    if "freq" in df.columns:
        rest = tier == 2
        strength[rest] = df["freq"].fillna(0)[rest]
    return tier * 1e12 - strength.clip(upper=1e11)


def select_latents(latents: pd.DataFrame, spec: str, max_latents: int = 0) -> list[int]:
    spec = (spec or "attributed").strip()
    df = latents
    if "freq" in df.columns:
        df = df[df["freq"].fillna(0) > 0]
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if parts and all(p.lstrip("-").isdigit() for p in parts):
        ids = [int(p) for p in parts]
        known = set(latents["latent"].astype(int)) if len(latents) else set()
        unknown = [i for i in ids if known and i not in known]
        if unknown:
            raise ValueError(
                f"interpret.latents names latents {unknown[:5]} that the run does not have (0..{max(known)})"
            )
        chosen = ids
    else:
        ordered = df.assign(_key=_priority(df)).sort_values(["_key", "latent"], kind="stable")
        if spec == "all":
            chosen = ordered["latent"].tolist()
        elif spec == "attributed":
            _require(df, ("attribution", "shift", "label_by_norm", "rel_norm"), spec)
            keep = ordered["attribution"].isin(["amplified", "suppressed"]) | ordered["label_by_norm"].isin(
                ["ft_only", "base_only"]
            )
            chosen = ordered.loc[keep, "latent"].tolist()
        else:
            bad = [p for p in parts if p not in ATTRIBUTION_LABELS + NORM_LABELS]
            if bad:
                raise ValueError(
                    f"interpret.latents: unknown selector {bad[0]!r}; use 'attributed', 'all', labels from "
                    f"{ATTRIBUTION_LABELS + NORM_LABELS}, or comma-separated latent ids"
                )
            keep = pd.Series(False, index=ordered.index)
            for p in parts:
                col = "attribution" if p in ATTRIBUTION_LABELS else "label_by_norm"
                _require(df, (col,), spec)
                keep |= ordered[col] == p
            chosen = ordered.loc[keep, "latent"].tolist()
    chosen = [int(x) for x in chosen]
    return chosen[:max_latents] if max_latents > 0 else chosen
