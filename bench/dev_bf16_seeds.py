"""Development scenario 12b: scenario 12's question again, on three dictionary seeds per arm.

Scenario 12 (``bench/dev_bf16_dictionary.py``) kept the demo float32 because its one bf16
dictionary attributed one latent where the one float32 dictionary attributed two (MNEME
F1 0 against 0.50). Scenario 14 then showed that on this pair the training seed alone
moves the prediction that way (at each layer one seed predicted chemistry, the other
nothing), so a one-seed rule on MNEME's F1 reads the seed as much as the variant. This
asks the same question on seeds 0, 1 and 2 of each arm (the encoder and the sentence
embedder in float32 or in bf16; collection float32 in both; every other setting the
default; the development pair of ``bench/dev_rmu.py``, not the demo).

The rule, written into this script before its run: bf16 for the encoder and the embedder
(where the CPU runs it natively) is recommended for the demo's next build if every bf16
dictionary meets the quality bounds (FVE >= 0.8 on both halves, dead <= 20% on held-out
tokens, L0/k in 0.8-1.25, median decoder cosine of shared latents >= 0.8), its mean FVE
per half is within 0.005 of float32's, and its mean MNEME F1 and mean baseline F1 over the
seeds are no lower than float32's. Known when the rule was written (disclosed, since they
enter the means): float32 seed 0 gave F1 0.50 and bf16 seed 0 gave 0 (scenario 12; both
reused here), a float32 seed 1 gave 0 in scenario 14 (retrained here: training on 2 threads
is not bit-for-bit repeatable), and the baseline, which no training seed touches, gave 0.50
with the float32 embedder and 0.80 with the bf16 one. Unknown: seeds 1 and 2 of both arms.

    python bench/dev_bf16_seeds.py [--work ~/.cache/mneme/dev-rmu]

About 25 minutes on 2 cores after scenario 12's runs (it builds what is missing).
"""

from __future__ import annotations

import json

from dev_bf16_dictionary import FVE_TOLERANCE, bf16_copy
from dev_precision import ROW_HEAD, quality, row
from dev_rmu import pair_from_command_line
from dev_seeds import replicate, summary

SEEDS = (0, 1, 2)


def main() -> None:
    work, f32_run = pair_from_command_line(__doc__)
    arms = {"float32": f32_run, "bfloat16": bf16_copy(f32_run, work)}
    runs = {
        arm: {seed: run if seed == 0 else replicate(run, seed, work / "bf16-seeds" / arm) for seed in SEEDS}
        for arm, run in arms.items()
    }
    rows = {arm: {seed: summary(r) | quality(r) for seed, r in by_seed.items()} for arm, by_seed in runs.items()}
    print(f"T = {rows['float32'][0]['T']}")
    print(f"precision seed | {ROW_HEAD} | P")
    for arm, by_seed in rows.items():
        for seed, r in by_seed.items():
            print(f"{arm:9s} {seed:4d} | {row(r)} | {r['P']}")

    def mean(arm: str, get) -> float:
        return sum(get(r) for r in rows[arm].values()) / len(SEEDS)

    f1 = {arm: mean(arm, lambda r: r["mneme"]["f1"] or 0.0) for arm in rows}
    base_f1 = {arm: mean(arm, lambda r: r["actdiff"]["f1"] or 0.0) for arm in rows}
    fve = {arm: [mean(arm, lambda r, h=h: r["fve"][h]) for h in (0, 1)] for arm in rows}
    adopt = (
        all(r["bounds_met"] for r in rows["bfloat16"].values())
        and all(abs(a - b) <= FVE_TOLERANCE for a, b in zip(fve["bfloat16"], fve["float32"]))
        and f1["bfloat16"] >= f1["float32"]
        and base_f1["bfloat16"] >= base_f1["float32"]
    )
    for arm in rows:
        print(
            f"{arm}: mean FVE {fve[arm][0]:.3f} / {fve[arm][1]:.3f}, mean MNEME F1 {f1[arm]:.2f}, baseline {base_f1[arm]:.2f}"
        )
    print(f"rule: {'recommend bf16 encoder and embedder for the next build' if adopt else 'stay float32'}")
    (work / "bf16_seeds.json").write_text(json.dumps({"rows": rows, "adopt": adopt}, indent=1, default=str))


if __name__ == "__main__":
    main()
