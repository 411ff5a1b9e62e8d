"""Development scenario 14: which layer to diff, the middle or where the models differ most?

The demo diffs layer 15 of SmolLM2's 30 (the middle, the paper's choice; never examined
here). ``mneme layers`` measures, without a dictionary or a benchmark, how much the two
models' residual streams differ at every layer; on the development pair (RMU on the
physical sciences, ``bench/dev_rmu.py``; not the demo) the change is 0 up to layer 4 and
largest at layer 7, right after the layers RMU edits. This asks whether MNEME predicts
better from the layer of largest change than from the middle.

Every earlier scenario compared one training of each variant, and the pair's prediction
turned on whether one or two latents were attributed, which retraining alone moves. So
this one trains each layer's dictionary twice (seeds 0 and 1; the rest of the study is
the same). The rule, written into this script before its first run: the demo diffs at the
layer of largest change if, over the two seeds, its mean MNEME F1 is higher than layer
15's, its precision is >= 0.5 wherever defined, and both of its dictionaries meet the
quality bounds (FVE >= 0.8 on both halves, dead <= 20% on held-out tokens, L0/k in
0.8-1.25, median decoder cosine of shared latents >= 0.8); otherwise layer 15 stays.

    python bench/dev_layer.py [--work ~/.cache/mneme/dev-rmu]

About 30 minutes on 2 cores once the pair is built (it is built first if missing, about 25).
"""

from __future__ import annotations

import json
from pathlib import Path

from dev_precision import ROW_HEAD, quality, row
from dev_rmu import pair_from_command_line
from dev_seeds import replicate, summary

from mneme_core.analysis.layers import scan_study
from mneme_core.run.pipeline import run_config
from mneme_core.run.replica import replica

SCAN_TOKENS = 20_000  # what `mneme layers` reads by default
SEEDS = (0, 1)


def at_layer(run: Path, layer: int, work: Path) -> Path:
    """A copy of the development run collected at ``layer`` (same corpus, models, settings),
    every stage from ``collect`` re-run (resumes a finished copy)."""
    return replica(run, work / f"layer{layer}", {"models": {"layer": layer}}, first="collect")


def main() -> None:
    work, middle = pair_from_command_line(__doc__)
    profile, current = scan_study(run_config(middle), SCAN_TOKENS, progress=False)
    largest = int(profile.loc[profile["rel_change"].idxmax(), "layer"])
    print(f"scan over {SCAN_TOKENS:,} tokens: largest change at layer {largest}; the demo's layer {current}")
    if largest == current:
        print("the demo already diffs the layer of largest change: nothing to compare")
        return
    runs = {current: {0: middle}, largest: {0: at_layer(middle, largest, work / "layers")}}
    for layer, by_seed in runs.items():
        for seed in SEEDS[1:]:
            by_seed[seed] = replicate(by_seed[0], seed, work / "layers" / f"seeds-layer{layer}")
    rows = {layer: {seed: summary(r) | quality(r) for seed, r in by_seed.items()} for layer, by_seed in runs.items()}
    print(f"T = {rows[current][0]['T']}")
    print(f"layer seed | {ROW_HEAD} | P")
    for layer, by_seed in rows.items():
        for seed, r in by_seed.items():
            print(f"{layer:5d} {seed:4d} | {row(r)} | {r['P']}")
    f1 = {
        layer: sum(r["mneme"]["f1"] or 0.0 for r in by_seed.values()) / len(by_seed) for layer, by_seed in rows.items()
    }
    precise = all(r["mneme"]["precision"] is None or r["mneme"]["precision"] >= 0.5 for r in rows[largest].values())
    adopt = f1[largest] > f1[current] and precise and all(r["bounds_met"] for r in rows[largest].values())
    print(f"mean MNEME F1: layer {current} {f1[current]:.2f}, layer {largest} {f1[largest]:.2f}")
    print(f"chosen by the rule: layer {largest if adopt else current}")
    out = {"profile": profile.to_dict(orient="records"), "rows": rows, "mean_f1": f1, "adopt": adopt}
    (work / "layer.json").write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
