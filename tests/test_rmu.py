"""RMU on a tiny real Llama: forget activations go to c·u, retain activations stay put."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from tiny import TINY_SENTENCES, tiny_llama, tiny_tokenizer

from mneme_core.collect.models import apply_delta
from mneme_core.interventions.rmu import (
    RMUConfig,
    RMUError,
    activation_report,
    random_direction,
    rmu_unlearn,
    save_rmu_delta,
)

FORGET = [s for s in TINY_SENTENCES if any(w in s for w in ("doctor", "plants", "birds", "farmer", "dog"))]
RETAIN = [s for s in TINY_SENTENCES if s not in FORGET]
CFG = RMUConfig(
    layer=2, steering_scale=3.0, alpha=10.0, lr=1e-2, steps=80, batch_size=3, max_tokens=16, checkpoint_every=40, seed=0
)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    return tiny_llama(tok, hidden_size=32, n_layers=4, seed=0), tok


@pytest.fixture(scope="module")
def unlearned(tiny):
    model, tok = tiny
    return rmu_unlearn(model, tok, FORGET, RETAIN, CFG, progress=False)


def test_forget_moves_to_target_and_retain_stays(tiny, unlearned):
    model, tok = tiny
    rep = activation_report(
        model,
        unlearned.model,
        tok,
        FORGET,
        RETAIN,
        unlearned.metrics["layer"],
        unlearned.direction,
        unlearned.steering_coef,
    )
    # forget tokens now point along u and sit near c·u; before, they did neither
    assert rep["forget_cos_before"] < 0.5
    assert rep["forget_cos_after"] > 0.9
    assert rep["forget_target_rel_err_before"] > 0.9
    assert rep["forget_target_rel_err_after"] < 0.3
    # retain tokens barely move, and far less than forget tokens did
    assert rep["retain_rel_err"] < 0.1
    assert rep["forget_rel_change"] > 5 * rep["retain_rel_err"]
    assert unlearned.steering_coef == pytest.approx(3.0 * unlearned.metrics["median_forget_norm"])
    assert unlearned.metrics["last"]["forget_loss"] < 0.2 * unlearned.metrics["first"]["forget_loss"]


def test_only_mlp_weights_of_layers_l_minus_2_to_l_change(tiny, unlearned, tmp_path):
    model, tok = tiny
    path = tmp_path / "rmu.safetensors"
    names = save_rmu_delta(model, unlearned, path)
    assert names == [f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1, 2)]
    with safe_open(str(path), framework="pt") as fh:
        assert sorted(fh.keys()) == names
    # the frozen model is untouched, and base + delta reproduces the unlearned model exactly
    fresh = tiny_llama(tok, hidden_size=32, n_layers=4, seed=0)
    for (n, a), b in zip(fresh.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), n
    apply_delta(fresh, path)
    for (n, a), b in zip(fresh.state_dict().items(), unlearned.model.state_dict().values()):
        assert torch.equal(a, b), n


def test_resume_from_checkpoint_gives_the_same_model(tiny, unlearned, tmp_path):
    model, tok = tiny
    ckpt = tmp_path / "ckpt.safetensors"
    first = rmu_unlearn(model, tok, FORGET, RETAIN, CFG, checkpoint=ckpt, progress=False)
    assert ckpt.is_file()  # written at step 40 of 80
    # a rerun (as after a kill at any step past 40) starts from the checkpoint, not from zero
    resumed = rmu_unlearn(model, tok, FORGET, RETAIN, CFG, checkpoint=ckpt, progress=False)
    assert resumed.metrics["resumed_from_step"] == 40
    for n, p in unlearned.model.named_parameters():
        assert torch.allclose(p, dict(first.model.named_parameters())[n])
        assert torch.allclose(p, dict(resumed.model.named_parameters())[n], atol=1e-6), n


def test_direction_is_fixed_unit_and_bad_settings_fail(tiny):
    u1, u2 = random_direction(32, 0), random_direction(32, 0)
    assert torch.equal(u1, u2) and u1.norm().item() == pytest.approx(1.0)
    model, tok = tiny
    with pytest.raises(RMUError, match="steps"):
        rmu_unlearn(model, tok, FORGET, RETAIN, RMUConfig(steps=0), progress=False)
    with pytest.raises(RMUError, match="MLP weights"):
        rmu_unlearn(model, tok, FORGET, RETAIN, RMUConfig(layer=2, params=("nope",), steps=1), progress=False)
    with pytest.raises(RMUError, match="non-empty"):
        rmu_unlearn(model, tok, [], RETAIN, RMUConfig(layer=2, steps=1), progress=False)
