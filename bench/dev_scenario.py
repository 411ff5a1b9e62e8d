"""The development scenario the attribution defaults were chosen on (not the demo).

A planted dictionary in superposition (more features than dimensions), most features
shared and a few of each changed kind, with heavier noise than the unit tests; the same
dictionary rendered identically in both models is the null. One cross-coder per scenario
(identical init, calibrated θ), one latent-scaling pass, then every (τ, z, min_fires) in
a small grid relabels the same table, so the grid costs nothing. Printed per setting:

- recall: share of recovered changed features (amplified / suppressed / base-only /
  ft-only) that get their planted label;
- false: recovered *shared* features labelled amplified or suppressed (should be 0);
- null: latents labelled anything but unchanged in the identical-models run (should be 0);
- noisy / hard: the same in a "noisy null", where the fine-tuned model is the base plus
  independent noise (a change of numerics, not of features): nothing is planted, so every
  label is a false one. ``noisy``: noise of 30% of a feature's norm per token, 60k
  tokens; ``hard``: noise as large as a feature, 8k tokens, so rare latents fire a few
  dozen times. These are the scenarios that separate the settings: an identical pair
  stays exactly identical under the identical init, so it labels nothing at any setting.

Run: ``python bench/dev_scenario.py`` (about 10 minutes on 2 cores). The figures are in
docs/DIFFING.md.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import replace

import numpy as np
import torch

from mneme_core.analysis.diffing import attribution_labels, latent_table
from mneme_core.common.config import CrossCoderConfig, DiffingConfig, TrainingConfig
from mneme_core.dictionary.synthetic import (
    EXPECTED,
    match_features,
    planted_activations,
)
from mneme_core.dictionary.training import train_crosscoder

FRACTIONS = {"shared": 0.8, "base_only": 0.04, "ft_only": 0.04, "amplified": 0.06, "suppressed": 0.06}
GRID = {"tau": (0.25, 0.5, 1.0), "z": (0.0, 2.0, 3.0, 5.0), "min_fires": (1, 20, 50, 200)}


def scenario(null: str = "", seed: int = 0, n_tokens: int = 60_000, extra_noise: float = 0.3):
    x, truth = planted_activations(n_tokens, 64, 300, seed=seed, mean_active=6.0, kind_fractions=FRACTIONS, noise=0.3)
    if null:
        x[:, 1] = x[:, 0]
    if null == "noisy":
        gen = torch.Generator().manual_seed(seed + 1)
        x[:, 1] += (extra_noise / np.sqrt(x.shape[-1])) * torch.randn(x[:, 1].shape, generator=gen)
    model, metrics = train_crosscoder(
        x,
        TrainingConfig(batch_size=1024, n_tokens=900_000, lr=3e-3, warmup_steps=50, dead_tokens=60_000),
        CrossCoderConfig(n_latents=600, k=6),
        progress=False,
    )
    return x, truth, model, metrics


def relabel(table, cfg: DiffingConfig):
    return attribution_labels(
        table["beta_base"], table["beta_ft"], table["beta_se_base"], table["beta_se_ft"], table["n_fires"], cfg
    )["attribution"].to_numpy()


def main() -> None:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    x, truth, model, metrics = scenario()
    table = latent_table(model, x)
    best, latent = match_features(model, truth)
    recovered = best >= 0.8
    kinds = np.array(truth.kinds)
    xn, _, null_model, null_metrics = scenario("identical")
    null_table = latent_table(null_model, xn)
    xq, _, noisy_model, noisy_metrics = scenario("noisy")
    noisy_table = latent_table(noisy_model, xq)
    xh, _, hard_model, _ = scenario("noisy", n_tokens=8_000, extra_noise=1.0)
    hard_table = latent_table(hard_model, xh)
    print(
        f"planted: FVE {metrics['fve_base']:.3f}/{metrics['fve_ft']:.3f}, L0/k {metrics['l0_over_k']:.2f}, "
        f"dead {metrics['dead_fraction']:.1%}, recovered {recovered.mean():.1%} of 300 features (cos >= 0.8)"
    )
    print(
        f"null:    FVE {null_metrics['fve_base']:.3f}, L0/k {null_metrics['l0_over_k']:.2f}, "
        f"median decoder cosine {float(np.median(null_table['dec_cos'])):.4f}"
    )
    print(
        f"noisy:   FVE {noisy_metrics['fve_base']:.3f}/{noisy_metrics['fve_ft']:.3f}, "
        f"median decoder cosine {float(np.median(noisy_table['dec_cos'])):.4f}"
    )
    print(f"{'tau':>5} {'z':>4} {'min_fires':>9} | {'recall':>6} {'false':>5} {'null':>4} {'noisy':>5} {'hard':>4}")
    for tau, z, mf in itertools.product(*GRID.values()):
        cfg = replace(DiffingConfig(), tau=tau, z=z, min_fires=mf)
        labels = relabel(table, cfg)
        got = labels[latent]
        want = np.array([EXPECTED[k]["attribution"] for k in kinds])
        changed = recovered & (kinds != "shared")
        recall = float((got[changed] == want[changed]).mean())
        false = int((recovered & (kinds == "shared") & (got != "unchanged")).sum())
        null = int((relabel(null_table, cfg) != "unchanged").sum())
        noisy = int((relabel(noisy_table, cfg) != "unchanged").sum())
        hard = int((relabel(hard_table, cfg) != "unchanged").sum())
        mark = "  <- default" if cfg == DiffingConfig() else ""
        print(f"{tau:5.2f} {z:4.1f} {mf:9d} | {recall:6.3f} {false:5d} {null:4d} {noisy:5d} {hard:4d}{mark}")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
