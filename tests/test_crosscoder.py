"""The BatchTopK cross-coder module: selection, sparse gradients, aux-k, persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mneme_core.dictionary.crosscoder import (
    BatchTopKCrossCoder,
    CrossCoderFileError,
    batch_topk_indices,
)


def _model(d=8, F=32, k=3, selection_norm="l2", seed=1, dtype=torch.float64):
    m = BatchTopKCrossCoder(d, F, k, selection_norm=selection_norm, seed=seed).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # unequal decoder norms, so the selection weight matters
        m.W_dec.mul_(torch.rand(2, F, 1, generator=gen, dtype=dtype) * 2)
        m.b_enc.copy_(0.1 * torch.randn(F, generator=gen, dtype=dtype))
        m.b_dec.copy_(0.1 * torch.randn(2, d, generator=gen, dtype=dtype))
    return m


@pytest.mark.parametrize("selection_norm,weights", [("l2", None), ("l2_squared", None), ("l2", (0.6, 1.4))])
def test_sparse_path_gradients_equal_dense_autograd_float64(selection_norm, weights):
    m = _model(selection_norm=selection_norm)
    x = torch.randn(24, 2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    dead = torch.zeros(32, dtype=torch.bool)
    dead[::3] = True
    c = None if weights is None else torch.tensor(weights, dtype=torch.float64)
    grads, outs = {}, {}
    for sparse in (True, False):
        m.zero_grad()
        out = m.training_loss(x, dead, k_aux=4, aux_alpha=0.5, sparse=sparse, model_weights=c)
        out.loss.backward()
        grads[sparse] = {n: p.grad.clone() for n, p in m.named_parameters()}
        outs[sparse] = out
    assert outs[True].aux > 0 and outs[True].l0 == pytest.approx(3.0)
    torch.testing.assert_close(outs[True].loss, outs[False].loss, rtol=1e-12, atol=1e-12)
    assert torch.equal(outs[True].fired_F, outs[False].fired_F)
    for name, g in grads[False].items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(grads[True][name], g, rtol=1e-10, atol=1e-12, msg=name)


def test_model_weights_make_the_loss_the_sum_of_both_models_unexplained_fractions():
    """c_m = mean variance / model m's variance (brute force in float64); then the weighted
    reconstruction error equals (mean variance) · Σ_m (1 − FVE_m); equal models weigh 1, 1."""
    m = _model()
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(400, 8, generator=gen, dtype=torch.float64) + 0.5
    x = torch.stack([base, 3.0 * base.flip(1) + 0.2 * torch.randn(400, 8, generator=gen, dtype=torch.float64)], 1)
    m.fit_normalization(x)
    c = m.model_weights_for(x)
    xn = (x * m.norm_scale[:, None]).numpy()
    var = [((xn[:, i] - xn[:, i].mean(0)) ** 2).sum(1).mean() for i in range(2)]
    np.testing.assert_allclose(c.numpy(), [np.mean(var) / var[0], np.mean(var) / var[1]], rtol=1e-12)
    assert c[0] > 5 * c[1]  # the ft half is ~9x the variance: its errors count ~9x less
    out = m.training_loss(m.normalize(x), model_weights=c)
    with torch.no_grad():
        x_hat = m.normalize(m.decode(m.encode(x, use_threshold=False)))
    err = ((x_hat - m.normalize(x)) ** 2).sum(2).mean(0).numpy()
    torch.testing.assert_close(out.recon, torch.tensor(np.mean(var) * sum(err[i] / var[i] for i in range(2))))
    twin = torch.stack([base, base], 1)
    torch.testing.assert_close(m.model_weights_for(twin), torch.ones(2, dtype=torch.float64))


def test_batch_topk_selects_the_largest_positive_scores_exactly():
    gen = torch.Generator().manual_seed(0)
    score = torch.randn(64, 100, generator=gen)
    score[5, :40] = 0.75  # a block of ties straddling the cut
    for n_keep in (1, 300, 2000):
        idx = batch_topk_indices(score, n_keep)
        assert idx.numel() == n_keep and torch.all(idx[1:] > idx[:-1])  # exact count, ascending
        kept = score.reshape(-1)[idx]
        rest = torch.ones(score.numel(), dtype=torch.bool)
        rest[idx] = False
        assert kept.min() >= score.reshape(-1)[rest].max()
    # fewer positive entries than n_keep: all of them, nothing else
    few = torch.full((10, 10), -1.0)
    few[2, 3], few[7, 1] = 0.5, 2.0
    assert batch_topk_indices(few, 20).tolist() == [23, 71]


@pytest.mark.parametrize("selection_norm", ["l2", "l2_squared"])
def test_selection_weight_is_the_decoder_norm_sum_and_rescales_scores(selection_norm):
    m = _model(selection_norm=selection_norm)
    n = m.W_dec.detach().norm(dim=-1)
    expected = n.sum(0) if selection_norm == "l2" else n.pow(2).sum(0)
    torch.testing.assert_close(m.selection_weights(), expected)
    # Two latents with the same pre-activation: the one with the larger decoder wins.
    with torch.no_grad():
        m.W_enc.zero_()
        m.b_enc.fill_(-1.0)
        m.b_enc[[4, 9]] = 1.0
        m.W_dec[:, 4] = 0.1
        m.W_dec[:, 9] = 1.0
    f = m.encode(torch.zeros(1, 2, 8, dtype=torch.float64), use_threshold=False)  # k*N = 3 slots, 2 candidates
    assert f[0, 4] == 1.0 and f[0, 9] == 1.0  # kept values are the unscaled f
    m.k = 1
    f = m.encode(torch.zeros(1, 2, 8, dtype=torch.float64), use_threshold=False)
    assert f[0].nonzero().squeeze(1).tolist() == [9]


def test_aux_loss_trains_only_dead_latents_and_never_the_decoder_bias():
    """Aux-k regresses the *detached* residual without b_dec: its gradient must reach the
    dead latents' parameters only (a leak would also move live rows and b_dec)."""
    m = _model()
    x = torch.randn(40, 2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    dead = torch.zeros(32, dtype=torch.bool)
    dead[20:] = True
    grads = []
    for alpha in (0.0, 1.0):
        m.zero_grad()
        m.training_loss(x, dead, k_aux=3, aux_alpha=alpha).loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    delta = {n: grads[1][n] - grads[0][n] for n in grads[0]}
    assert delta["b_dec"].abs().max() == 0
    live = ~dead
    assert delta["W_dec"][:, live].abs().max() == 0 and delta["W_enc"][:, :, live].abs().max() == 0
    assert delta["b_enc"][live].abs().max() == 0
    assert delta["W_dec"][:, dead].abs().max() > 0 and delta["W_enc"][:, :, dead].abs().max() > 0


def test_aux_loss_revives_latents_that_batchtopk_starved():
    """Latents with tiny decoder rows never win BatchTopK, so the main loss never trains
    them. With aux-k their rows learn the residual and they fire again; without it they
    stay dead."""
    from mneme_core.dictionary.synthetic import planted_activations

    x, _ = planted_activations(4096, 16, 48, seed=2, mean_active=4)
    starved = torch.arange(16, 32)
    fired_share = {}
    for alpha in (0.0, 1.0 / 32):
        m = BatchTopKCrossCoder(16, 32, 4, seed=0)
        m.fit_normalization(x)
        m.init_decoder_bias(x[:256])
        with torch.no_grad():
            m.W_dec[:, starved] *= 1e-3
        opt = torch.optim.Adam(m.parameters(), lr=3e-3)
        dead = torch.zeros(32, dtype=torch.bool)
        dead[starved] = True
        for step in range(120):
            xb = m.normalize(x[(step * 128) % 4096 :][:128])
            out = m.training_loss(xb, dead, k_aux=8, aux_alpha=alpha)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        with torch.no_grad():
            f = m.encode(x, use_threshold=False)
        fired_share[alpha] = float((f[:, starved] > 0).any(0).float().mean())
    assert fired_share[0.0] == 0.0
    assert fired_share[1.0 / 32] >= 0.5


def test_threshold_encode_keeps_scores_above_theta_and_decode_inverts_normalisation():
    m = _model(dtype=torch.float32)
    x = torch.randn(50, 2, 8) * torch.tensor([2.0, 0.5])[None, :, None]
    m.fit_normalization(x)
    sq = m.normalize(x).pow(2).sum(-1).mean(0)
    # one scale for both models: pooled E‖x‖² = d, and the fine-tuned model stays 4× smaller in energy
    assert float(sq.mean()) == pytest.approx(8.0, rel=1e-4)
    assert float(sq[0] / sq[1]) == pytest.approx(
        float(x[:, 0].pow(2).sum(-1).mean() / x[:, 1].pow(2).sum(-1).mean()), rel=1e-4
    )
    with torch.no_grad():
        m.threshold.fill_(0.3)
        f = m.encode(x)
        pre = torch.relu(m.normalize(x).reshape(50, -1) @ m.W_enc_DF + m.b_enc)
        expected = pre * (pre * m.selection_weights() > 0.3)
        torch.testing.assert_close(f, expected)
        x_hat = m(x)
        torch.testing.assert_close(m.normalize(x_hat), m.decode(f, normalized=True))
        torch.testing.assert_close(x_hat, torch.einsum("nf,mfd->nmd", f, m.W_dec).add(m.b_dec) / m.norm_scale[:, None])
    with pytest.raises(ValueError, match=r"\(N, 2, 8\)"):
        m.encode(torch.zeros(5, 8))


def test_save_and_from_pretrained_round_trip_exactly(tmp_path):
    m = _model(dtype=torch.float32, selection_norm="l2_squared")
    with torch.no_grad():
        m.threshold.fill_(0.42)
        m.norm_scale.copy_(torch.tensor([0.5, 3.0]))
    m.save(tmp_path / "cc")
    assert sorted(p.name for p in (tmp_path / "cc").iterdir()) == ["config.json", "model.safetensors"]
    loaded = BatchTopKCrossCoder.from_pretrained(tmp_path / "cc")
    assert (loaded.d_model, loaded.n_latents, loaded.k, loaded.selection_norm) == (8, 32, 3, "l2_squared")
    for name, t in m.tensors().items():
        assert torch.equal(loaded.tensors()[name], t), name
    x = torch.randn(20, 2, 8)
    assert torch.equal(loaded.encode(x), m.encode(x)) and torch.equal(loaded(x), m(x))


def test_missing_or_corrupt_files_give_clear_errors(tmp_path):
    with pytest.raises(CrossCoderFileError, match="config.json is missing"):
        BatchTopKCrossCoder.from_pretrained(tmp_path / "nowhere")
    m = _model(dtype=torch.float32)
    m.save(tmp_path / "cc")
    weights = tmp_path / "cc" / "model.safetensors"
    good = weights.read_bytes()

    weights.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(CrossCoderFileError, match="not a readable safetensors file"):
        BatchTopKCrossCoder.from_pretrained(tmp_path / "cc")
    weights.write_bytes(b"\x80\x04garbage pickle-like bytes")
    with pytest.raises(CrossCoderFileError, match="damaged or truncated"):
        BatchTopKCrossCoder.from_pretrained(tmp_path / "cc")
    weights.unlink()
    with pytest.raises(CrossCoderFileError, match="model.safetensors is missing"):
        BatchTopKCrossCoder.from_pretrained(tmp_path / "cc")

    weights.write_bytes(good)
    cfg_path = tmp_path / "cc" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "n_latents": 64}))
    with pytest.raises(CrossCoderFileError, match=r"'W_enc' has shape \(2, 8, 32\), config.json implies \(2, 8, 64\)"):
        BatchTopKCrossCoder.from_pretrained(tmp_path / "cc")
    cfg_path.write_text("{not json")
    with pytest.raises(CrossCoderFileError, match="not valid JSON"):
        BatchTopKCrossCoder.from_pretrained(tmp_path / "cc")


def test_identical_init_starts_every_latent_shared_with_the_pre_activation_size_kept():
    """Step 0: both halves of encoder and decoder are one draw (cosine 1, relative norm
    0.5), and on paired inputs x_base = x_ft the pre-activation has the variance of one
    kaiming draw over 2d inputs (the 1/√2 scaling)."""
    from mneme_core.analysis.diffing import decoder_metrics

    m = BatchTopKCrossCoder(64, 512, 8, seed=3)
    table = decoder_metrics(m.W_dec)
    np.testing.assert_allclose(table["dec_cos"], 1.0, atol=1e-6)
    np.testing.assert_allclose(table["rel_norm"], 0.5, atol=1e-7)
    assert (table["label_by_norm"] == "shared").all()
    torch.testing.assert_close(m.W_enc[0], m.W_enc[1])
    torch.testing.assert_close(m.W_dec[0], m.W_enc[0].t())
    x = torch.randn(4096, 1, 64).expand(4096, 2, 64)
    with torch.no_grad():
        pre = m._pre(x)
    # kaiming-uniform over fan-in d: Var(w) = 1/(3d); pre = 2·Σ_d x w with w scaled 1/√2 → Var = 2/3
    assert float(pre.var()) == pytest.approx(2 / 3, rel=0.1)


def test_threshold_calibration_hits_k_per_token_on_held_out_tokens():
    """θ from one set of tokens gives mean L0 = k on another set from the same source,
    and exactly k·N on the calibration tokens themselves."""
    m = BatchTopKCrossCoder(16, 96, 6, seed=0)
    gen = torch.Generator().manual_seed(0)
    calib = torch.randn(3000, 2, 16, generator=gen)
    held = torch.randn(3000, 2, 16, generator=gen)
    m.fit_normalization(calib)
    theta = m.calibrate_threshold(calib.split(512))
    assert theta > 0 and float(m.threshold) == pytest.approx(theta)
    with torch.no_grad():
        assert int((m.encode(calib) > 0).sum()) == 6 * 3000
        l0_held = float((m.encode(held) > 0).sum(1).float().mean())
    assert l0_held == pytest.approx(6, rel=0.05)
