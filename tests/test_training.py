"""Training loop: planted features, threshold, metrics, checkpoints and resume, bad input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mneme_core.common.config import (
    ConfigError,
    CrossCoderConfig,
    TrainingConfig,
    load_config,
)
from mneme_core.dictionary.crosscoder import BatchTopKCrossCoder
from mneme_core.dictionary.synthetic import (
    EXPECTED,
    KINDS,
    match_features,
    planted_activations,
)
from mneme_core.dictionary.training import evaluate, train_crosscoder

# Planted study: 40 features (8 per kind) in d=64, 128 latents, ~4.3 features per token
# and k=4: with slack in k, BatchTopK happily splits a feature over two latents.
D, N_FEATURES, F, K = 64, 40, 128, 4
TRAIN = TrainingConfig(
    batch_size=256,
    n_tokens=120_000,
    lr=3e-3,
    warmup_steps=20,
    dead_tokens=5_000,
    val_fraction=0.1,
    checkpoint_every=100,
)
CC = CrossCoderConfig(n_latents=F, k=K)


@pytest.fixture(scope="module")
def planted():
    return planted_activations(30_000, D, N_FEATURES, seed=0, mean_active=3.0)


@pytest.fixture(scope="module")
def trained(planted):
    torch.set_num_threads(1)
    x, _ = planted
    return train_crosscoder(x, TRAIN, CC, progress=False)


def test_planted_activations_have_the_documented_structure():
    x, truth = planted_activations(20_000, 32, 10, seed=1, mean_active=2.0, noise=0.0, offset=0.0)
    assert x.shape == (20_000, 2, 32) and truth.directions.shape == (2, 10, 32)
    assert truth.kinds == tuple(k for k in KINDS for _ in range(2))
    torch.testing.assert_close(torch.einsum("nf,mfd->nmd", truth.codes, truth.directions), x, rtol=1e-5, atol=1e-5)
    ratio = truth.directions[1].norm(dim=1) / truth.directions[0].norm(dim=1).clamp_min(1e-12)
    expected_ratio = {"shared": 1.0, "amplified": 2.0, "suppressed": 0.3}
    for kind, r in zip(truth.kinds, ratio.tolist()):
        if kind in expected_ratio:
            assert r == pytest.approx(expected_ratio[kind], rel=1e-5)
        elif kind == "base_only":
            assert truth.directions[1][truth.kinds.index(kind)].abs().max() == 0
    energy = x.pow(2).sum(-1).mean(0)  # balanced: both models carry the same energy
    assert float(energy[1] / energy[0]) == pytest.approx(1.0, abs=0.05)
    assert truth.expected("attribution") == [EXPECTED[k]["attribution"] for k in truth.kinds]


def test_planted_features_are_recovered(planted, trained):
    _, truth = planted
    model, metrics = trained
    best, latent = match_features(model, truth)
    assert (best >= 0.9).mean() >= 0.9, np.round(best, 3)
    assert len(set(latent[best >= 0.9].tolist())) == int((best >= 0.9).sum())  # one latent per feature
    assert metrics["fve_base"] > 0.9 and metrics["fve_ft"] > 0.9
    assert metrics["steps"] == 120_000 // 256 and metrics["tokens_seen"] == metrics["steps"] * 256
    # the held-out 3,000: half calibrate θ, half give the metrics
    assert metrics["n_calibration_tokens"] == 1_500 and metrics["n_val_tokens"] == 1_500
    assert metrics["n_train_tokens"] == 27_000
    json.dumps(metrics)  # JSON-able as the run manifest needs


def test_threshold_inference_keeps_about_k_latents_per_token(planted, trained):
    x, _ = planted
    model, metrics = trained
    calib, val = x[-3_000:-1_500], x[-1_500:]  # θ is calibrated on the first held-out half
    assert float(model.threshold) > 0
    with torch.no_grad():
        assert int((model.encode(calib, use_threshold=True) > 0).sum()) == K * len(calib)  # exact where calibrated
        l0_threshold = float((model.encode(val, use_threshold=True) > 0).sum(1).float().mean())
        l0_batch = float((model.encode(val, use_threshold=False) > 0).sum(1).float().mean())
    assert l0_batch == pytest.approx(K)
    assert l0_threshold == pytest.approx(K, rel=0.1)  # tokens θ never saw
    assert metrics["l0"] == pytest.approx(l0_threshold)
    assert metrics["l0_over_k"] == pytest.approx(l0_threshold / K)


def test_metrics_follow_their_definitions(planted, trained):
    x, _ = planted
    model, metrics = trained
    val = x[-1_500:].double()
    with torch.no_grad():
        f = model.encode(x[-1_500:])
        x_n = model.normalize(val)
        e = x_n - model.decode(f, normalized=True).double()
    for m, name in enumerate(("base", "ft")):
        fve = 1 - e[:, m].var(0, unbiased=False).sum() / x_n[:, m].var(0, unbiased=False).sum()
        assert metrics[f"fve_{name}"] == pytest.approx(float(fve), abs=1e-6)
        assert metrics[f"mse_{name}"] == pytest.approx(float(e[:, m].pow(2).mean()), rel=1e-6)
    assert metrics["dead_fraction"] == pytest.approx(float(((f > 0).sum(0) == 0).float().mean()))
    assert evaluate(model, x, start=28_500) == {k: metrics[k] for k in evaluate(model, x, start=28_500)}


def test_balanced_loss_keeps_the_smaller_model_reconstructed():
    """A fine-tune that triples the stream (its own features 9x the variance) takes the
    dictionary from the base under the plain summed loss (the default); the balanced loss
    weights each model by its inverse variance and gives both a fair share (min FVE much
    higher)."""
    x, _ = planted_activations(12_000, 32, 24, seed=0, mean_active=3.0)
    x[:, 1] *= 3.0
    cfg = TrainingConfig(batch_size=256, n_tokens=40_000, lr=3e-3, warmup_steps=20, dead_tokens=3_000, val_fraction=0.1)
    cc = CrossCoderConfig(n_latents=64, k=3)
    _, plain = train_crosscoder(x, cfg, cc, progress=False)
    _, balanced = train_crosscoder(x, dataclasses.replace(cfg, balance_models=True), cc, progress=False)
    assert plain["model_loss_weights"] is None
    c_base, c_ft = balanced["model_loss_weights"]
    assert c_base > 5 * c_ft  # ~9x the variance in the fine-tuned half
    assert balanced["fve_base"] > plain["fve_base"] + 0.05
    assert min(balanced["fve_base"], balanced["fve_ft"]) > min(plain["fve_base"], plain["fve_ft"]) + 0.05


def test_resume_from_checkpoint_equals_an_uninterrupted_run(tmp_path):
    x, _ = planted_activations(6_000, 16, 12, seed=3)
    cfg = TrainingConfig(
        batch_size=128,
        n_tokens=128 * 30,
        lr=2e-3,
        warmup_steps=5,
        dead_tokens=512,
        val_fraction=0.1,
        checkpoint_every=7,
        balance_models=True,  # its loss weights are trainer state: a resume must carry them
    )
    cc = CrossCoderConfig(n_latents=32, k=3)
    whole, whole_metrics = train_crosscoder(x, cfg, cc, progress=False, checkpoint_dir=tmp_path / "a")
    first, first_metrics = train_crosscoder(x, cfg, cc, progress=False, checkpoint_dir=tmp_path / "b", stop_after=17)
    ckpts = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert ckpts == ["step_00000014", "step_00000017"]  # every 7 steps + at the stop, last two kept
    state = json.loads((tmp_path / "b" / "step_00000017" / "state.json").read_text())
    assert state["step"] == 17 and state["tokens_seen"] == 17 * 128
    saved = load_file(str(tmp_path / "b" / "step_00000017" / "tensors.safetensors"))
    # the loss weights are checkpointed trainer state (the metrics round them to 4 places)
    assert saved["trainer.model_weights"].tolist() == pytest.approx(first_metrics["model_loss_weights"], abs=1e-4)
    resumed, resumed_metrics = train_crosscoder(x, cfg, cc, progress=False, checkpoint_dir=tmp_path / "b")
    assert resumed_metrics["steps"] == whole_metrics["steps"] == 30
    assert not torch.equal(first.W_enc, whole.W_enc)
    for name, t in whole.tensors().items():  # same batches, same state: the same model
        assert torch.equal(resumed.tensors()[name], t), name
    for key in ("fve_base", "fve_ft", "l0", "dead_fraction", "threshold", "dead_fraction_train"):
        assert resumed_metrics[key] == pytest.approx(whole_metrics[key], abs=1e-5), key
    assert resumed_metrics["model_loss_weights"] == whole_metrics["model_loss_weights"] is not None
    # A finished run re-evaluates without training again.
    again, again_metrics = train_crosscoder(x, cfg, cc, progress=False, checkpoint_dir=tmp_path / "b")
    assert again_metrics["tokens_per_s"] is None and torch.equal(again.W_dec, resumed.W_dec)
    # A checkpoint from another plan is refused, naming what changed.
    with pytest.raises(ConfigError, match="different training plan.*n_latents"):
        train_crosscoder(x, cfg, CrossCoderConfig(n_latents=48, k=3), progress=False, checkpoint_dir=tmp_path / "b")


def test_a_checkpoint_from_before_the_balanced_loss_resumes_only_without_it(tmp_path):
    """Its plan has no balance_models: it was trained on the plain loss, so resuming it with
    the balanced one would switch losses half-way; that is refused like any plan change."""
    x, _ = planted_activations(3_000, 16, 12, seed=4)
    cfg = TrainingConfig(batch_size=128, n_tokens=128 * 10, warmup_steps=2, val_fraction=0.1, checkpoint_every=5)
    cc = CrossCoderConfig(n_latents=32, k=3)
    train_crosscoder(x, cfg, cc, progress=False, checkpoint_dir=tmp_path, stop_after=5)
    state_file = tmp_path / "step_00000005" / "state.json"
    state = json.loads(state_file.read_text())
    del state["plan"]["balance_models"]  # as written before the option existed
    state_file.write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="balance_models: False then, True now"):
        train_crosscoder(x, dataclasses.replace(cfg, balance_models=True), cc, progress=False, checkpoint_dir=tmp_path)
    _, m = train_crosscoder(x, cfg, cc, progress=False, checkpoint_dir=tmp_path)
    assert m["steps"] == 10 and m["model_loss_weights"] is None


def test_study_config_and_bad_inputs(planted):
    x, _ = planted
    study = load_config(
        {
            "models": {"base": {"path": "b"}, "ft": {"path": "f"}},
            "corpus": {"files": ["c.txt"]},
            "crosscoder": {"n_latents": 16, "k": 2},
            "training": {"batch_size": 64, "n_tokens": 640, "val_fraction": 0.1, "warmup_steps": 2},
        }
    )
    model, metrics = train_crosscoder(x[:2_000], study, progress=False)
    assert isinstance(model, BatchTopKCrossCoder) and model.n_latents == 16 and metrics["steps"] == 10
    with pytest.raises(ValueError, match=r"\(N, 2, d\)"):
        train_crosscoder(x[:, 0], TRAIN, CC, progress=False)
    with pytest.raises(ConfigError, match="fewer than training.batch_size"):
        train_crosscoder(x[:100], TRAIN, CC, progress=False)
    with pytest.raises(ConfigError, match="must not exceed the number of latents"):
        train_crosscoder(x[:2_000], TRAIN, CrossCoderConfig(n_latents=4, k=8), progress=False)
    with pytest.raises(TypeError, match="StudyConfig or a TrainingConfig"):
        train_crosscoder(x[:2_000], {"batch_size": 4}, progress=False)


def test_run_stage_trains_from_the_run_store_and_resumes(tiny_study, tmp_path):
    """The pipeline's train stage on a real (tiny-model) activation store."""
    import dataclasses

    from mneme_core.collect import activations
    from mneme_core.dictionary import training
    from mneme_core.run.store import init_run

    cfg = dataclasses.replace(tiny_study, run_dir=str(tmp_path / "run"))
    init_run(cfg.run_path, cfg.to_dict())
    activations.run_stage(cfg, cfg.run_path, progress=False)
    metrics = training.run_stage(cfg, cfg.run_path, progress=False)
    out = cfg.run_path / "crosscoder"
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics["steps"] == cfg.training.n_tokens // cfg.training.batch_size and metrics["fve_base"] > 0
    model = BatchTopKCrossCoder.from_pretrained(out)
    assert model.n_latents == cfg.crosscoder.n_latents and float(model.threshold) > 0
    assert any(p.name.startswith("step_") for p in (out / "checkpoints").iterdir())
    again = training.run_stage(cfg, cfg.run_path, progress=False)  # finished: re-evaluates only
    assert again["tokens_per_s"] is None and again["fve_ft"] == metrics["fve_ft"]
    assert torch.equal(BatchTopKCrossCoder.from_pretrained(out).W_dec, model.W_dec)
