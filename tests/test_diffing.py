"""Attribution: closed-form latent scaling equals brute force; norms and labels are right."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mneme_core.analysis.diffing import (
    BETA_COLUMNS,
    attribution_labels,
    beta_ratio,
    decoder_metrics,
    latent_table,
    primary_probes,
)
from mneme_core.common.config import DiffingConfig
from mneme_core.dictionary.crosscoder import BatchTopKCrossCoder

D, F, N = 12, 40, 600


def _crosscoder(seed: int = 0) -> tuple[BatchTopKCrossCoder, torch.Tensor]:
    """A real cross-coder with base-only, ft-only and unequal rows, a bias, and per-model
    normalisation scales that differ (so a raw-space β would disagree with the normalised
    one), plus raw activations on which ~a third of the latents fire per token."""
    gen = torch.Generator().manual_seed(seed)
    cc = BatchTopKCrossCoder(D, F, k=6, seed=seed)
    x = torch.randn(N, 2, D, generator=gen) * torch.tensor([3.0, 0.5])[None, :, None] + 0.3
    with torch.no_grad():
        cc.W_dec[1, 0:4] *= 0.01  # base-only rows
        cc.W_dec[0, 4:8] *= 0.01  # ft-only rows
        cc.W_dec[1, 8:12] *= 2.5  # stronger in ft
        cc.W_dec.add_(0.05 * torch.randn(cc.W_dec.shape, generator=gen))
        cc.b_dec.copy_(0.2 * torch.randn(2, D, generator=gen))
        cc.b_enc.fill_(-0.05)
        cc.fit_normalization(x)
        cc.threshold.fill_(0.05)
    return cc, x


def _brute_force(cc: BatchTopKCrossCoder, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-latent float64 least squares of y on f_j·u_j, one latent at a time."""
    with torch.no_grad():
        f = cc.encode(x, use_threshold=True).double()
        xn = cc.normalize(x.double())
        xhat = cc.decode(f.float(), normalized=True).double()
    W = cc.W_dec.detach().double()
    out = {name: np.full(F, np.nan) for name in BETA_COLUMNS}
    for j in range(F):
        fj = f[:, j]
        if not torch.any(fj > 0):
            continue
        dominant = W[0, j] if W[0, j].norm() >= W[1, j].norm() else W[1, j]
        for m, model in ((0, "base"), (1, "ft")):
            err = xn[:, m] - xhat[:, m] + fj[:, None] * W[m, j]
            for tag, u in (("", dominant), ("_own", W[m, j])):
                A = (fj[:, None] * u[None, :]).reshape(-1, 1)
                for target, y in (("err", err), ("recon", xhat[:, m])):
                    out[f"beta_{target}{tag}_{model}"][j] = torch.linalg.lstsq(A, y.reshape(-1, 1)).solution.item()
    return out


@pytest.mark.parametrize("batch_size", [64, 4096])
def test_closed_form_beta_equals_brute_force_for_every_latent(batch_size):
    cc, x = _crosscoder()
    table = latent_table(cc, x, DiffingConfig(batch_size=batch_size))
    expected = _brute_force(cc, x)
    fired = table["freq"].to_numpy() > 0
    assert fired.sum() >= F - 2, "the fixture should make (nearly) every latent fire"
    for name in BETA_COLUMNS:
        got = table[name].to_numpy()
        # float32 per-batch partial sums (the activations themselves are fp16/bf16 on disk)
        # vs float64 everywhere: agreement to ~1e-5; a wrong probe/target/term is off by ≥ 1e-2
        np.testing.assert_allclose(got[fired], expected[name][fired], rtol=1e-4, atol=1e-5, err_msg=name)
        assert np.all(np.isnan(got[~fired])), f"{name}: a latent that never fired has no β"
    # the variants really differ (a bug that reuses one probe or one target would not)
    assert not np.allclose(table["beta_err_ft"], table["beta_err_own_ft"], equal_nan=True)
    assert not np.allclose(table["beta_err_base"], table["beta_recon_base"], equal_nan=True)


def test_n_tokens_limits_the_analysis_to_the_first_tokens():
    cc, x = _crosscoder()
    full = latent_table(cc, x)
    first = latent_table(cc, x, DiffingConfig(n_tokens=200))
    again = latent_table(cc, x[:200])
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(full["beta_err_base"], first["beta_err_base"], equal_nan=True)


def test_freq_and_max_act_match_the_codes():
    cc, x = _crosscoder()
    table = latent_table(cc, x, DiffingConfig(batch_size=100))
    with torch.no_grad():
        f = cc.encode(x, use_threshold=True)
    np.testing.assert_allclose(table["freq"], (f > 0).float().mean(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(table["max_act"], f.max(0).values.numpy(), rtol=1e-6)


def test_decoder_metrics_and_norm_labels():
    W = torch.zeros(2, 5, 3)
    W[0, 0, 0] = 1.0  # base only
    W[1, 1, 0] = 2.0  # ft only
    W[0, 2, 1], W[1, 2, 1] = 1.0, 1.0  # shared, same direction
    W[0, 3, 0], W[1, 3, 1] = 1.0, 3.0  # r = 0.75 -> other, orthogonal
    # latent 4: both rows zero
    t = decoder_metrics(W)
    np.testing.assert_allclose(t["rel_norm"][:4], [0.0, 1.0, 0.5, 0.75])
    assert np.isnan(t["rel_norm"][4])
    np.testing.assert_allclose(t["dec_cos"][:4], [0.0, 0.0, 1.0, 0.0])
    assert list(t["label_by_norm"]) == ["base_only", "ft_only", "shared", "other", "other"]
    custom = decoder_metrics(W, DiffingConfig(shared_band=(0.4, 0.8), ft_only_above=0.95))
    assert custom["label_by_norm"][3] == "shared"


def test_beta_states_shift_and_labels():
    """Each state and label from (β, se, fires): significance against the band's edge,
    β ≤ 0 as "absent" (no huge ratio), the evidence floor."""
    cfg = DiffingConfig()  # the defaults: tau 0.5, z 3, min_fires 50
    b = np.array([1.0, 1.0, 1.0, 0.0, -0.2, 0.0, np.nan, 1.0, 1.0, 1.0, 1.0])
    f = np.array([2.0, 0.3, 1.1, 1.0, 1.0, 0.0, np.nan, -0.5, 2.0, 2.0, 1.5])
    se = np.array([0.01] * 8 + [1.0, 0.01, 0.2])
    fires = np.array([500] * 9 + [10, 500])
    out = attribution_labels(b, f, se, se, fires, cfg)
    assert list(out["beta_state"]) == [
        "present",
        "present",
        "present",
        "absent_base",
        "absent_base",
        "absent_both",
        "too_few_fires",
        "absent_ft",
        "present",
        "too_few_fires",
        "present",
    ]
    assert list(out["attribution"]) == [
        "amplified",
        "suppressed",
        "unchanged",
        "amplified",
        "amplified",
        "unchanged",
        "unchanged",
        "suppressed",
        "unchanged",
        "unchanged",
        "unchanged",
    ]
    np.testing.assert_allclose(out["shift"][[0, 1, 2]], np.log2([2.0, 0.3, 1.1]))
    assert out["shift"][[3, 4, 5, 6, 7]].isna().all()  # absent: undefined, not ±max_shift
    # delta method: se(log2 f/b) = sqrt((se_f/f)² + (se_b/b)²) / ln 2
    assert out["shift_se"][8] == pytest.approx(np.sqrt(0.25 + 1.0) / np.log(2))
    # 1.5× with se 0.2: beyond τ (1.41×) but not by 3 se of the difference: unchanged
    assert out["attribution"][10] == "unchanged"
    np.testing.assert_allclose(beta_ratio(b, f, 1e-8)[[0, 1, 4]], [0.5, 1 / 0.3, -0.2])
    assert np.isnan(beta_ratio(b, f, 1e-8)[5])


def test_beta_standard_error_equals_brute_force_token_clustered_fit():
    """The one-pass standard error of the primary β equals a float64 least-squares fit per
    latent with the sandwich (token-clustered) variance, for the probe each latent got."""
    cc, x = _crosscoder()
    table = latent_table(cc, x, DiffingConfig(batch_size=128, min_fires=1))
    primary, kind = primary_probes(cc.W_dec.detach(), DiffingConfig())
    assert {"dominant", "own"} >= set(kind) and (table["probe"] == kind).all()
    with torch.no_grad():
        f = cc.encode(x, use_threshold=True).double()
        xn = cc.normalize(x.double())
        xhat = cc.decode(f.float(), normalized=True).double()
    W = cc.W_dec.detach().double()
    checked = 0
    for j in range(F):
        on = f[:, j] > 0
        if on.sum() < 3:
            continue
        for m, name in ((0, "base"), (1, "ft")):
            u = primary[m, j].double()
            fj = f[on, j]
            y = xn[on, m] - xhat[on, m] + fj[:, None] * W[m, j]  # (n, d)
            X = fj[:, None] * u[None, :]  # (n, d): one regressor, observed d times per token
            beta = float((X * y).sum() / (X * X).sum())
            resid = y - beta * X
            score = (X * resid).sum(1)  # per-token score
            se = float(score.pow(2).sum().sqrt() / (X * X).sum())
            assert table[f"beta_{name}"][j] == pytest.approx(beta, rel=1e-4, abs=1e-6)
            assert table[f"beta_se_{name}"][j] == pytest.approx(se, rel=1e-3, abs=1e-7)
            checked += 1
    assert checked >= 2 * (F - 4)


def test_planted_attribution_on_a_known_crosscoder():
    """Activations built from known rows: each latent's β and label say what was planted."""
    gen = torch.Generator().manual_seed(3)
    d, n = 24, 3000
    basis = torch.linalg.qr(torch.randn(d, d, generator=gen))[0]
    # latent: 0 shared, 1 amplified ×2, 2 suppressed ×0.3, 3 base-only, 4 ft-only
    ft_gain = torch.tensor([1.0, 2.0, 0.3, 0.0, 1.0])
    base_gain = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])
    rows = basis[:5]
    codes = torch.rand(n, 5, generator=gen) * (torch.rand(n, 5, generator=gen) < 0.3)
    x = torch.stack([(codes * base_gain) @ rows, (codes * ft_gain) @ rows], 1)
    x = x + 0.01 * torch.randn(x.shape, generator=gen)
    cc = BatchTopKCrossCoder(d, 5, k=5)
    # a cross-coder that learned it perfectly, with the ft rows at the "wrong" norm for the
    # amplified/suppressed latents (as training's shrinkage often leaves them): β must fix it
    W_dec = torch.stack([rows * base_gain[:, None], rows * torch.tensor([1.0, 1.5, 0.6, 0.0, 1.0])[:, None]])
    cc.load_tensors(
        {
            "W_enc": torch.stack([rows.T, rows.T]) * 0.5,
            "b_enc": torch.zeros(5),
            "W_dec": W_dec,
            "b_dec": torch.zeros(2, d),
            "threshold": torch.tensor(0.0),
            "norm_scale": torch.ones(2),
        }
    )
    # encoder reads both models: base-only and ft-only latents still get their f from one side
    with torch.no_grad():
        cc.W_enc[0, :, 4] = 0.0
        cc.W_enc[1, :, 4] = rows[4]
        cc.W_enc[0, :, 3] = rows[3]
        cc.W_enc[1, :, 3] = 0.0
    t = latent_table(cc, x)
    ratio = 2.0 ** t["shift"].to_numpy()
    np.testing.assert_allclose(ratio[:3], [1.0, 2.0, 0.3], rtol=0.05)
    assert list(t["attribution"]) == ["unchanged", "amplified", "suppressed", "suppressed", "amplified"]
    assert list(t["label_by_norm"][[0, 3, 4]]) == ["shared", "base_only", "ft_only"]
    np.testing.assert_allclose(t["beta_err_base"][[0, 3]], 1.0, rtol=0.05)
    np.testing.assert_allclose(t["beta_err_ft"][[0, 4]], 1.0, rtol=0.05)
    assert abs(t["beta_err_base"][4]) < 0.05 and abs(t["beta_err_ft"][3]) < 0.05


def test_planted_features_trained_crosscoder_gets_every_label_right():
    """synthetic dictionary → real training → latent_table: each recovered planted feature
    (best decoder cosine ≥ 0.9) carries its kind's norm label and attribution."""
    from mneme_core.common.config import CrossCoderConfig, TrainingConfig
    from mneme_core.dictionary.synthetic import (
        EXPECTED,
        match_features,
        planted_activations,
    )
    from mneme_core.dictionary.training import train_crosscoder

    x, truth = planted_activations(10_000, 32, 20, seed=0, mean_active=3.0)
    model, _ = train_crosscoder(
        x,
        TrainingConfig(batch_size=512, n_tokens=80_000, lr=1e-2, warmup_steps=20, dead_tokens=20_000),
        CrossCoderConfig(n_latents=40, k=4),
        progress=False,
    )
    table = latent_table(model, x)
    best, latent = match_features(model, truth)
    recovered = best >= 0.9
    assert recovered.mean() >= 0.9, best
    wrong = []
    for f in np.flatnonzero(recovered):
        row = table.iloc[latent[f]]
        want = EXPECTED[truth.kinds[f]]
        if (row["label_by_norm"], row["attribution"]) != (want["label_by_norm"], want["attribution"]):
            wrong.append((truth.kinds[f], row["label_by_norm"], row["attribution"], row["shift"], row["rel_norm"]))
    assert not wrong, wrong
    # the shift measures the planted ratio itself, not just its sign
    for kind, ratio in (("amplified", 2.0), ("suppressed", 0.3), ("shared", 1.0)):
        rows = [latent[f] for f in np.flatnonzero(recovered) if truth.kinds[f] == kind]
        np.testing.assert_allclose(table["shift"].to_numpy()[rows], np.log2(ratio), atol=0.15, err_msg=kind)


def test_identical_pair_trained_at_the_defaults_labels_nothing():
    """The planted dictionary rendered identically in both "models": training and latent
    scaling at their defaults must leave every latent unchanged (the null control)."""
    from mneme_core.common.config import CrossCoderConfig, TrainingConfig
    from mneme_core.dictionary.synthetic import planted_activations
    from mneme_core.dictionary.training import train_crosscoder

    x, _ = planted_activations(10_000, 32, 20, seed=0, mean_active=3.0)
    x[:, 1] = x[:, 0]
    model, metrics = train_crosscoder(
        x,
        TrainingConfig(batch_size=512, n_tokens=80_000, lr=1e-2, warmup_steps=20, dead_tokens=20_000),
        CrossCoderConfig(n_latents=40, k=4),
        progress=False,
    )
    table = latent_table(model, x)
    assert (table["attribution"] == "unchanged").all()
    live = table["n_fires"] > 0
    np.testing.assert_allclose(table.loc[live, "dec_cos"], 1.0, atol=1e-5)  # identical init never drifts apart
    assert metrics["l0_over_k"] == pytest.approx(1.0, abs=0.2)
