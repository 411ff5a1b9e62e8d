"""Development scenario 4b: does the balanced loss help when the fine-tune grows the stream?

Development scenario 4 (``bench/dev_training.py --pair rmu-strong --grid balance``) asked
this on the strong RMU pair of the physical-sciences forget set, and found nothing to
decide: that pair's layer-15 stream did not grow (mean norm 173.8 base, 174.7 unlearned),
so both losses weigh the two models alike. This scenario builds the condition on purpose,
on the planted dictionary of ``bench/dev_scenario.py`` (not the demo): the fine-tuned
half's own change — its ft-only and amplified features — is made ``g`` times stronger, so
the fine-tuned stream carries more variance than the base's, as an unlearning that
steers many neutral tokens does. ``g = 1`` is the planted scenario as it is.

Per growth ``g`` and loss (plain sum, balanced): held-out FVE per model, the planted
features recovered (decoder cosine ≥ 0.8) and, at the default diffing settings, the recall
of the planted labels and the false labels on shared features (as ``dev_scenario.py``).

Rule 1, written before the first result (``--seeds 0``): the balanced loss becomes the
library default if, on both grown pairs (g = 2, 3), it lifts the lower of the two FVEs by
≥ 0.005 without costing attribution (recall down by ≤ 0.02, no more false labels), and on
g = 1 moves the lower FVE by < 0.005 (it must be a no-op where nothing grew). It gave
"plain": the grown pairs gained 0.021 and 0.052, but g = 1 moved by 0.010 although its
weights are 1.00 / 1.00 — a difference of the size a changed training trajectory alone
makes, which a single run cannot tell from an effect.

Rule 2, written after rule 1's result and before any run of it, on fresh planted draws
(``--seeds 1,2,3``; seed 0 is not reused): per growth, the paired difference of the lower
FVE (balanced − plain) over the seeds, its mean Δ and standard error. The balanced loss
becomes the default if on g = 2 and g = 3 Δ ≥ 0.005 and Δ > 2·SE, the recall at the
default diffing settings is on average not lower by more than 0.02 and the false labels
not more in total; and on g = 1 (no growth) Δ > −0.005 − 2·SE (no harm beyond the
trainer's own spread). A third line reports the spread that answers rule 1's doubt: plain
vs plain with another training seed on g = 1.

Run: ``python bench/dev_balance.py [--seeds 1,2,3]`` (about 1 minute per seed on 2 cores).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch
from dev_scenario import FRACTIONS, relabel

from mneme_core.analysis.diffing import latent_table
from mneme_core.common.config import CrossCoderConfig, DiffingConfig, TrainingConfig
from mneme_core.dictionary.synthetic import EXPECTED, match_features, planted_activations
from mneme_core.dictionary.training import train_crosscoder

GROWTH = (1.0, 2.0, 3.0)
TRAIN = TrainingConfig(batch_size=1024, n_tokens=900_000, lr=3e-3, warmup_steps=50, dead_tokens=60_000)


def grown_pair(g: float, seed: int = 0):
    """The planted scenario with the fine-tuned half's ft-only and amplified features × g."""
    x, truth = planted_activations(60_000, 64, 300, seed=seed, mean_active=6.0, kind_fractions=FRACTIONS, noise=0.3)
    own = torch.tensor([k in ("ft_only", "amplified") for k in truth.kinds])
    x[:, 1] += (g - 1.0) * truth.codes[:, own] @ truth.directions[1, own]
    return x, truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="1,2,3", help="planted draws, comma-separated (0 = rule 1's single run)")
    seeds = [int(s) for s in ap.parse_args().seeds.split(",")]
    t0 = time.perf_counter()
    rows = [row for seed in seeds for row in run_seed(seed)]
    if seeds == [0]:
        rule_1(rows)
    else:
        rule_2(rows)
    print(f"({time.perf_counter() - t0:.0f} s)")


def run_seed(seed: int) -> list[dict]:
    """Plain and balanced loss on each growth of one planted draw (and, on g = 1, plain
    again with another training seed: the trainer's own spread)."""
    rows = []
    for g in GROWTH:
        x, truth = grown_pair(g, seed)
        kinds = np.array(truth.kinds)
        want = np.array([EXPECTED[k]["attribution"] for k in kinds])
        runs = [("plain", False, 0), ("balanced", True, 0)] + ([("plain, seed 1", False, 1)] if g == 1 else [])
        for label, balance, train_seed in runs:
            model, m = train_crosscoder(
                x,
                replace(TRAIN, balance_models=balance, seed=train_seed),
                CrossCoderConfig(n_latents=600, k=6),
                progress=False,
            )
            best, latent = match_features(model, truth)
            recovered = best >= 0.8
            got = relabel(latent_table(model, x), DiffingConfig())[latent]
            changed = recovered & (kinds != "shared")
            rows.append(
                {
                    "seed": seed,
                    "g": g,
                    "loss": label,
                    "fve_base": m["fve_base"],
                    "fve_ft": m["fve_ft"],
                    "weights": m["model_loss_weights"],
                    "recovered": float(recovered.mean()),
                    "recall": float((got[changed] == want[changed]).mean()),
                    "false": int((recovered & (kinds == "shared") & (got != "unchanged")).sum()),
                }
            )
            r = rows[-1]
            w = "—" if r["weights"] is None else "/".join(f"{v:.2f}" for v in r["weights"])
            print(
                f"seed {seed} g {g:.0f} {label:13s} | FVE {r['fve_base']:.3f} / {r['fve_ft']:.3f} "
                f"| weights {w:>9s} | recovered {r['recovered']:.1%} | recall {r['recall']:.3f} | false {r['false']}",
                flush=True,
            )
    return rows


def _low(r: dict) -> float:
    return min(r["fve_base"], r["fve_ft"])


def rule_1(rows: list[dict]) -> None:
    by = {(r["g"], r["loss"]): r for r in rows}
    grown_ok = all(
        _low(by[g, "balanced"]) - _low(by[g, "plain"]) >= 0.005
        and by[g, "balanced"]["recall"] >= by[g, "plain"]["recall"] - 0.02
        and by[g, "balanced"]["false"] <= by[g, "plain"]["false"]
        for g in GROWTH
        if g > 1
    )
    noop = abs(_low(by[1.0, "balanced"]) - _low(by[1.0, "plain"])) < 0.005
    print(f"rule 1: {'balanced' if grown_ok and noop else 'plain'} loss")


def rule_2(rows: list[dict]) -> None:
    by = {(r["seed"], r["g"], r["loss"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})

    def paired(g: float, a: str, b: str, key=_low) -> tuple[float, float]:
        d = np.array([key(by[s, g, a]) - key(by[s, g, b]) for s in seeds])
        return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")

    ok = True
    for g in GROWTH:
        mean, se = paired(g, "balanced", "plain")
        recall, _ = paired(g, "balanced", "plain", key=lambda r: r["recall"])
        false = sum(by[s, g, "balanced"]["false"] - by[s, g, "plain"]["false"] for s in seeds)
        print(
            f"g {g:.0f}: lower FVE balanced - plain {mean:+.4f} (SE {se:.4f}), recall {recall:+.3f}, false {false:+d}"
        )
        if g > 1:
            ok &= mean >= 0.005 and mean > 2 * se and recall >= -0.02 and false <= 0
        else:
            ok &= mean > -0.005 - 2 * se
    spread, spread_se = paired(1.0, "plain, seed 1", "plain")
    print(f"g 1: plain (training seed 1) - plain {spread:+.4f} (SE {spread_se:.4f}): the trainer's own spread")
    print(f"rule 2: {'balanced' if ok else 'plain'} loss")


if __name__ == "__main__":
    main()
