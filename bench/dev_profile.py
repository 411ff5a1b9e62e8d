"""Development scenario 5a: would a latent's category *profile* recover more of the change?

MNEME misses degraded categories that hold no attributed latent (development scenario 2:
materials and weather; docs/DIFFING.md). One reason could be the single label: a latent
that RMU changed fires across the forget domain, but its category is read from its top 5
windows alone. This asks, on development scenario 2's trained run (``bench/dev_rmu.py``;
not the demo), whether reading every window the contexts stage kept would do better:
each window takes the label its packed context got for the dictionary-free baseline (same
taxonomy, embedder and benchmark mapping), so a latent has a share per category.

- V0: the default (top-5 window embedding, one label, hypergeometric enrichment).
- V1: profile from the top 10 and the 8 quantile-sampled windows; a category's mass is
  the sum of the attributed latents' shares (each latent adds at most 1, so none
  dominates); p from 20,000 draws of as many latents from the eligible pool; predicted at
  p < 0.05 / K with mass ≥ 2 (the default minimum of two latents' worth).
- V2: as V1 from the quantile samples only (uniform over the latent's firing tokens).
- V3: V1's majority label as the one category (ties to the first label by name), tested
  with V0's hypergeometric enrichment.

The pool of V1–V3 is the latents over the evidence floor with at least one window whose
context got a label (a latent without one has no profile); V0 keeps the engine's pool.

The rule, written before the first result: the highest MNEME F1; on a tie the higher
precision; on a further tie V0 (the default), then V1, V2, V3. Run from the project root
after ``bench/dev_rmu.py`` (about a minute):

    python bench/dev_profile.py [--work ~/.cache/mneme/dev-rmu]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mneme_core.collect.activations import ActivationStore
from mneme_core.collect.models import cache_root
from mneme_core.common.config import EvaluationConfig
from mneme_core.evaluation.evaluate import (
    category_mapping,
    category_scores,
    default_predict_threshold,
    metrics,
    predict,
)

DRAWS = 20_000
DEFAULTS = EvaluationConfig()  # the corrected level and minimum count of the default reading


def window_profiles(windows: pd.DataFrame, latents: set[int], universe: list[str]) -> pd.DataFrame:
    """Latents × benchmark categories: the share of each latent's windows per category."""
    w = windows[windows["latent"].isin(latents) & windows["bench"].notna()]
    tab = pd.crosstab(w["latent"], w["bench"]).reindex(columns=universe, fill_value=0)
    return tab.div(tab.sum(axis=1), axis=0)


def context_benchmark(diffs: pd.DataFrame, universe: list[str], embedder: Any = None) -> pd.Series:
    """context_id -> the benchmark category its label maps to (the dictionary-free baseline's
    per-context label, mapped as the evaluation maps latents' categories)."""
    mapping = category_mapping(sorted(diffs["category"].dropna().unique()), universe, embedder)
    to_bench = dict(zip(mapping["mneme_category"], mapping["benchmark_category"]))
    return diffs.set_index("context_id")["category"].map(to_bench)


def labelled_windows(run: Path, store: ActivationStore, bench_of_context: pd.Series) -> pd.DataFrame:
    """The contexts stage's windows (``latent, kind, rank, token_index``) with ``bench``, the
    benchmark category of the packed context each window's token lies in."""
    windows = pd.read_parquet(run / "contexts.parquet", columns=["latent", "kind", "rank", "token_index"])
    context = np.asarray(store.context_ids)[windows["token_index"]]
    return windows.assign(bench=pd.Series(context).map(bench_of_context).to_numpy())


def predict_by_mass(profiles: pd.DataFrame, attributed: set[int], seed: int = 0) -> set[str]:
    """Categories whose attributed mass beats random draws of as many pool latents."""
    att = profiles.index.isin(attributed)
    n, mass = int(att.sum()), profiles[att].sum(axis=0).to_numpy()
    if n == 0:
        return set()
    rng = np.random.default_rng(seed)
    pool = profiles.to_numpy()
    null = np.stack([pool[rng.choice(len(pool), n, replace=False)].sum(0) for _ in range(DRAWS)])
    p = ((null >= mass[None] - 1e-12).sum(0) + 1) / (DRAWS + 1)
    K = profiles.shape[1]
    return {
        c
        for c, pc, m in zip(profiles.columns, p, mass)
        if pc < DEFAULTS.significance / K and m >= DEFAULTS.predict_min_latents
    }


def predict_by_majority(profiles: pd.DataFrame, latents: pd.DataFrame) -> set[str]:
    """V0's own enrichment rule (``category_scores`` and ``predict`` at the evaluation's
    defaults) on each latent's majority label, which is already a benchmark category."""
    labelled = latents[latents["latent"].isin(profiles.index)].assign(
        category=lambda t: t["latent"].map(profiles.idxmax(axis=1))
    )
    universe = list(profiles.columns)
    scores = category_scores(labelled, {c: c for c in universe}, universe, latent_direction="both")
    return predict(scores, default_predict_threshold(scores, alpha=DEFAULTS.significance), DEFAULTS.predict_min_latents)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=cache_root() / "dev-rmu")
    run = ap.parse_args().work.resolve() / "runs" / "rmu"
    latents = pd.read_parquet(run / "latents.parquet")
    ev = json.loads((run / "evaluation.json").read_text())
    T, universe = set(ev["T"]), list(ev["universe"])
    diffs = pd.read_parquet(run / "context_diffs.parquet", columns=["context_id", "category"])
    windows = labelled_windows(run, ActivationStore(run / "activations"), context_benchmark(diffs, universe))
    eligible = set(latents.loc[latents["beta_state"] != "too_few_fires", "latent"].astype(int))
    attributed = set(latents.loc[latents["attribution"].isin(["amplified", "suppressed"]), "latent"].astype(int))
    both = window_profiles(windows[(windows["kind"] == "quantile") | (windows["rank"] < 10)], eligible, universe)
    quantile = window_profiles(windows[windows["kind"] == "quantile"], eligible, universe)
    variants = {
        "V0 default (top-5 embedding)": set(ev["P"]),
        "V1 profile, top + quantile": predict_by_mass(both, attributed),
        "V2 profile, quantile": predict_by_mass(quantile, attributed),
        "V3 majority of V1's windows": predict_by_majority(both, latents),
    }
    print(f"T = {sorted(T)}; {len(attributed)} attributed of {len(eligible)} eligible latents")
    mass = both[both.index.isin(attributed)].sum(axis=0).nlargest(4).round(2)
    print(f"attributed mass per category (V1): {mass.to_dict()}")
    rows: list[tuple[float, float, int, str]] = []
    for name, P in variants.items():
        m = metrics(T, P, universe)
        rows.append((m["f1"] or 0.0, m["precision"] or 0.0, -len(rows), name))
        prec = "   —" if m["precision"] is None else f"{m['precision']:4.2f}"
        print(f"{name:30s} | acc {m['accuracy']:4.2f} prec {prec} F1 {m['f1']:4.2f} | P {sorted(P)}")
    print(f"chosen by the rule: {max(rows)[3]}")


if __name__ == "__main__":
    main()
