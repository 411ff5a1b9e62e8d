"""Development scenario 13: the dictionary-free baseline's effect floor on medians.

Scenario 7 gave the baseline an effect floor: a category is predicted only where its
contexts' mean change is at least √2 times the *other* contexts' mean. Its known blind spot
(Side effects page, docs/DIFFING.md): when two categories move a lot, their change lifts
the rest's mean, and a category that moved moderately beside them falls under the floor.
A median is not lifted by a few far-moved categories. This asks whether the floor should
compare medians (the category's median change over the other contexts' median) instead of
means, with everything else as it is (the Mann–Whitney test, its corrected level, the
minimum count, the floor √2).

The baseline reads no dictionary, so on the development pair (``bench/dev_rmu.py``: RMU on
the physical sciences; not the demo) its result does not depend on a cross-coder's
training noise. The rule, written into this script before its first run: the median floor
replaces the mean floor if the baseline's F1 on the pair is higher with it; on a tie or
less the mean stays.

    python bench/dev_baseline_median.py [--work ~/.cache/mneme/dev-rmu]

Seconds once the pair is built (it is built first if missing, about 25 minutes).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from dev_rmu import pair_from_command_line

from mneme_core.analysis.actdiff import CONTEXT_DIFFS_FILE, moved_more_p
from mneme_core.common.embeddings import get_embedder
from mneme_core.evaluation.evaluate import category_mapping, metrics
from mneme_core.run.pipeline import run_config


def predict(diffs: pd.DataFrame, mapping: dict, universe: list[str], alpha: float, min_n: int, floor: float, stat):
    """The baseline's rule with ``stat`` (np.mean or np.median) in its floor: per category
    its p, its ratio and whether it is predicted."""
    bench = diffs["category"].map(mapping).to_numpy()
    values = diffs["rel_diff"].to_numpy(np.float64)
    rows = []
    for cat in universe:
        inside = bench == cat
        n_in = int(inside.sum())
        p = moved_more_p(values, inside)
        ratio = float(stat(values[inside]) / stat(values[~inside])) if 0 < n_in < len(values) else float("nan")
        ok = p < alpha / len(universe) and n_in >= min_n and ratio >= floor
        rows.append({"category": cat, "n": n_in, "p": p, "ratio": ratio, "predicted": bool(ok)})
    return pd.DataFrame(rows)


def main() -> None:
    work, run = pair_from_command_line(__doc__)
    cfg = run_config(run).evaluation
    record = json.loads((run / "evaluation.json").read_text())
    universe, T = record["universe"], record["T"]
    diffs = pd.read_parquet(run / CONTEXT_DIFFS_FILE)
    cats = sorted(diffs["category"].astype(str).unique().tolist())
    mapping_df = category_mapping(cats, universe, get_embedder(run_config(run).interpret.embedding_model))
    mapping = dict(zip(mapping_df["mneme_category"], mapping_df["benchmark_category"]))
    diffs = diffs.assign(category=diffs["category"].astype(str))
    args_ = (diffs, mapping, universe, cfg.significance, cfg.predict_min_latents, cfg.baseline_min_ratio)
    tables = {name: predict(*args_, stat) for name, stat in (("mean", np.mean), ("median", np.median))}
    recorded = sorted(record["metrics"]["activation_diff"]["set"])
    assert sorted(tables["mean"].query("predicted")["category"]) == recorded, "must reproduce the run's own baseline"
    print(f"T = {T}; floor {cfg.baseline_min_ratio:.3f}")
    results = {}
    for name, t in tables.items():
        P = sorted(t.query("predicted")["category"])
        m = metrics(T, P, universe)
        results[name] = {"P": P, **{k: m[k] for k in ("accuracy", "precision", "f1")}}
        sig = t[t["p"] < cfg.significance / len(universe)].sort_values("ratio", ascending=False)
        shown = ", ".join(f"{r.category} ({r.ratio:.2f})" for r in sig.itertuples())
        print(
            f"{name:6s} floor | acc {m['accuracy']:.2f} prec {m['precision'] if m['precision'] is not None else float('nan'):.2f} "
            f"F1 {m['f1']:.2f} | P {P}\n              significant, with ratio: {shown}"
        )
    adopt = (results["median"]["f1"] or 0.0) > (results["mean"]["f1"] or 0.0)
    print(f"chosen by the rule: {'median' if adopt else 'mean'}")
    (work / "baseline_median.json").write_text(json.dumps({"results": results, "adopt": adopt}, indent=2))


if __name__ == "__main__":
    main()
