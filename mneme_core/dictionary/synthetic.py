"""Paired activations with planted features: a ground truth for the cross-coder and diffing.

``planted_activations`` draws a sparse code over a known dictionary and renders it in two
"models". Every feature has one unit direction ``u`` (random — orthonormal when
``n_features <= d`` — and shared by both models) and a
pair of scales ``(s_base, s_ft)`` fixed by its kind:

=============  ======  =====  ==============  ==================  =====================
kind           s_base  s_ft   rel. norm r     ``label_by_norm``   ``attribution``
=============  ======  =====  ==============  ==================  =====================
shared         1       1      0.5             shared              unchanged
base_only      1       0      0               base_only           suppressed
ft_only        0       1      1               ft_only             amplified
amplified      1       2      0.67            other               amplified
suppressed     1       0.3    0.23            other               suppressed
=============  ======  =====  ==============  ==================  =====================

(``EXPECTED`` holds the last two columns; τ for the attribution must be below
log2(2) = 1 for "amplified" to be separable from "unchanged".)

``x_m = Σ_f a_f s_m,f u_f + μ_m + noise``, with ``a_f ≥ 0`` the shared activation (so a
feature fires in both models on the same tokens, scaled per model), ``μ_m`` a per-model
offset (exercises ``b_dec``) and isotropic Gaussian noise.

Balanced norms: the cross-coder scales each model to E‖x_m‖² = d. If the fine-tuned
model carried more energy (amplified ×2 quadruples a feature's), that per-model scale
would shrink every fine-tuned decoder row and bias relative norms. With
``balance_norms=True`` (default) suppressed features fire more often than amplified ones
by exactly the factor that makes the two models' expected energy equal, so the scales
match and the table above holds in the cross-coder's normalised space too.

``match_features(model, truth)`` scores recovery: for each planted feature the best
cosine between its concatenated pair ``[s_base u; s_ft u]`` and a latent's concatenated
decoder rows brought back to raw space — high only when both the direction and the
base/ft ratio are right.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

KINDS = ("shared", "base_only", "ft_only", "amplified", "suppressed")
SCALES: dict[str, tuple[float, float]] = {
    "shared": (1.0, 1.0),
    "base_only": (1.0, 0.0),
    "ft_only": (0.0, 1.0),
    "amplified": (1.0, 2.0),
    "suppressed": (1.0, 0.3),
}
EXPECTED: dict[str, dict[str, str]] = {
    "shared": {"label_by_norm": "shared", "attribution": "unchanged"},
    "base_only": {"label_by_norm": "base_only", "attribution": "suppressed"},
    "ft_only": {"label_by_norm": "ft_only", "attribution": "amplified"},
    "amplified": {"label_by_norm": "other", "attribution": "amplified"},
    "suppressed": {"label_by_norm": "other", "attribution": "suppressed"},
}


@dataclass(frozen=True)
class PlantedTruth:
    """The dictionary behind ``planted_activations``.

    directions: (2, n_features, d) float32 — feature f's vector in model m (raw space),
        ``scales[m, f] * unit[f]``.
    unit: (n_features, d) unit directions; scales: (2, n_features).
    kinds: feature kind names (see ``KINDS``), length n_features.
    freq: (n_features,) firing probability per token.
    codes: (N, n_features) float32 activations ``a`` (0 where the feature is off).
    """

    directions: torch.Tensor
    unit: torch.Tensor
    scales: torch.Tensor
    kinds: tuple[str, ...]
    freq: torch.Tensor
    codes: torch.Tensor

    def expected(self, column: str) -> list[str]:
        """Expected ``label_by_norm`` or ``attribution`` per feature."""
        return [EXPECTED[k][column] for k in self.kinds]


def planted_activations(
    n_tokens: int,
    d: int,
    n_features: int,
    seed: int = 0,
    *,
    mean_active: float = 4.0,
    kind_fractions: dict[str, float] | None = None,
    noise: float = 0.05,
    offset: float = 0.5,
    balance_norms: bool = True,
) -> tuple[torch.Tensor, PlantedTruth]:
    """Paired activations ``(n_tokens, 2, d)`` float32 and their ground truth.

    mean_active: expected features firing per token (before balancing).
    kind_fractions: share of features per kind (default equal); counts are rounded and
        every listed kind with a positive share gets at least one feature.
    noise: std of the Gaussian noise, as a fraction of a unit feature's norm per token
        (total over dims), i.e. per-dim std ``noise / sqrt(d)``.
    offset: norm of each model's constant offset ``μ_m``.
    """
    if n_tokens <= 0 or d <= 0 or n_features < len(KINDS) and kind_fractions is None:
        raise ValueError(f"need n_tokens > 0, d > 0 and n_features >= {len(KINDS)}; got {n_tokens}, {d}, {n_features}")
    fractions = kind_fractions or {k: 1.0 for k in KINDS}
    unknown = set(fractions) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown feature kinds {sorted(unknown)}; kinds are {KINDS}")
    kinds = _allocate(n_features, fractions)
    gen = torch.Generator().manual_seed(seed)

    unit = torch.randn(n_features, d, generator=gen, dtype=torch.float64)
    if n_features <= d:  # orthonormal: no cross terms, so the energy balance is exact
        unit = torch.linalg.qr(unit.T).Q.T
    unit /= unit.norm(dim=1, keepdim=True)
    scales = torch.tensor([SCALES[k] for k in kinds], dtype=torch.float64).T  # (2, n)
    freq = torch.full((n_features,), mean_active / n_features, dtype=torch.float64)
    if balance_norms:
        freq = _balanced_freq(freq, scales, kinds)
    if float(freq.max()) > 1.0:
        raise ValueError(f"mean_active={mean_active} is too high for {n_features} features; lower it")

    fires = torch.rand(n_tokens, n_features, generator=gen, dtype=torch.float64) < freq
    magnitude = torch.exp(0.25 * torch.randn(n_tokens, n_features, generator=gen, dtype=torch.float64))
    codes = fires * magnitude
    mu = torch.randn(2, d, generator=gen, dtype=torch.float64)
    mu *= offset / mu.norm(dim=1, keepdim=True)
    directions = scales[:, :, None] * unit[None]  # (2, n, d)
    x = torch.einsum("nf,mfd->nmd", codes, directions) + mu
    x += (noise / np.sqrt(d)) * torch.randn(n_tokens, 2, d, generator=gen, dtype=torch.float64)
    truth = PlantedTruth(
        directions=directions.float(),
        unit=unit.float(),
        scales=scales.float(),
        kinds=tuple(kinds),
        freq=freq.float(),
        codes=codes.float(),
    )
    return x.float(), truth


def _allocate(n_features: int, fractions: dict[str, float]) -> list[str]:
    names = [k for k in KINDS if fractions.get(k, 0.0) > 0]
    total = sum(fractions[k] for k in names)
    counts = {k: max(1, int(round(n_features * fractions[k] / total))) for k in names}
    while sum(counts.values()) > n_features:  # rounding overshoot: trim the largest
        counts[max(counts, key=lambda k: counts[k])] -= 1
    while sum(counts.values()) < n_features:
        counts[max(names, key=lambda k: fractions[k])] += 1
    return [k for k in names for _ in range(counts[k])]


def _balanced_freq(freq: torch.Tensor, scales: torch.Tensor, kinds: list[str]) -> torch.Tensor:
    """Raise the suppressed (or amplified) features' rate so E‖x_base‖² = E‖x_ft‖².

    Energy of feature f in model m ∝ freq_f · s_m,f². Base-only and ft-only, and the
    count difference between them, are balanced too by scaling whichever side is short.
    """
    freq = freq.clone()
    kinds_arr = np.array(kinds)
    excess = float((freq * (scales[1] ** 2 - scales[0] ** 2)).sum())  # ft minus base
    # Kinds that carry more energy in base (negative diff) absorb a positive excess, and
    # vice versa; scale their rates by one common factor.
    diff = scales[1] ** 2 - scales[0] ** 2
    side = (
        torch.from_numpy(np.isin(kinds_arr, ["suppressed", "base_only"]))
        if excess > 0
        else torch.from_numpy(np.isin(kinds_arr, ["amplified", "ft_only"]))
    )
    side &= diff.abs() > 0
    carried = float((freq[side] * diff[side]).sum())
    if excess != 0 and carried != 0:
        freq[side] *= 1.0 + excess / -carried
    return freq


def match_features(model, truth: PlantedTruth) -> tuple[np.ndarray, np.ndarray]:
    """Best cosine per planted feature and the latent achieving it.

    Compares ``[d_base; d_ft]`` of each planted feature with each latent's decoder rows
    mapped back to raw space (``W_dec[m] / norm_scale[m]``), concatenated.
    """
    with torch.no_grad():
        W = model.W_dec.detach().double().cpu() / model.norm_scale.double().cpu()[:, None, None]  # (2, F, d)
        lat = torch.cat([W[0], W[1]], dim=1)
        lat = lat / lat.norm(dim=1, keepdim=True).clamp_min(1e-12)
        true = torch.cat([truth.directions[0], truth.directions[1]], dim=1).double()
        true = true / true.norm(dim=1, keepdim=True)
        cos = true @ lat.T  # (n_features, F)
        best, arg = cos.max(dim=1)
    return best.numpy(), arg.numpy()
