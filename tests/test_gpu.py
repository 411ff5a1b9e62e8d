"""The GPU paths: training, latent scaling, collection, a study's torch stages and causal
confirmation on CUDA, each checked against the planted truth or the same computation on
the CPU.

Skipped where torch sees no GPU (CI has none). On a machine with one:
``python -m pytest tests/test_gpu.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from _causal import build_causal_run
from conftest import tiny_study_dict
from test_diffing import _crosscoder
from test_training import CC, TRAIN

from mneme_core.analysis import diffing
from mneme_core.analysis.diffing import BETA_COLUMNS, latent_table
from mneme_core.collect.activations import ActivationStore
from mneme_core.common.config import load_config
from mneme_core.dictionary.crosscoder import BatchTopKCrossCoder
from mneme_core.dictionary.synthetic import match_features, planted_activations
from mneme_core.dictionary.training import train_crosscoder
from mneme_core.evaluation import confirmation as cf
from mneme_core.evaluation import confirmation_view as cv
from mneme_core.run.pipeline import run_study
from mneme_core.run.store import read_manifest

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TORCH_STAGES = ["collect", "train", "diff", "contexts"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_training_on_the_gpu_recovers_planted_features(dtype):
    """The same planted study as the CPU test, trained on CUDA (bf16: the encoder matmul in
    bfloat16, what the README suggests for GPUs): the same quality bars."""
    x, truth = planted_activations(30_000, 64, 40, seed=0, mean_active=3.0)
    model, metrics = train_crosscoder(x, dataclasses.replace(TRAIN, dtype=dtype), CC, progress=False)
    assert model.W_dec.device.type == "cuda"
    best, latent = match_features(model, truth)
    assert (best >= 0.9).mean() >= 0.9, np.round(best, 3)
    assert metrics["fve_base"] > 0.9 and metrics["fve_ft"] > 0.9
    assert metrics["l0_over_k"] == pytest.approx(1.0, abs=0.1)


def test_latent_scaling_on_the_gpu_equals_the_cpu():
    """Every β, its standard error and every label from a CUDA pass equal the CPU pass."""
    cc, x = _crosscoder()
    on_cpu = latent_table(cc, x)
    on_gpu = latent_table(copy.deepcopy(cc).to("cuda"), x)
    for column in [*BETA_COLUMNS, "beta_base", "beta_ft", "beta_se_base", "beta_se_ft", "rel_norm", "dec_cos"]:
        np.testing.assert_allclose(on_gpu[column], on_cpu[column], rtol=1e-4, atol=1e-6, err_msg=column)
    for column in ["n_fires", "label_by_norm", "attribution", "beta_state", "probe"]:
        assert on_gpu[column].tolist() == on_cpu[column].tolist(), column


@pytest.fixture(scope="module")
def gpu_and_cpu_runs(tiny_model_dirs, tiny_corpus, tmp_path_factory):
    """The tiny study's torch stages on CUDA with bfloat16 models, and on the CPU in
    float32 (the reference)."""
    root = tmp_path_factory.mktemp("gpu")
    base, ft = tiny_model_dirs
    runs: dict = {"diff_devices": []}
    measure = diffing.latent_table

    def spy(model, *args, **kwargs):  # which device the diff stage's latent scaling ran on
        runs["diff_devices"].append(model.W_dec.device.type)
        return measure(model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(diffing, "latent_table", spy)
        for name, device, dtype in (("gpu", "cuda", "bfloat16"), ("cpu", "cpu", "float32")):
            study = tiny_study_dict(base, ft, tiny_corpus, root / name)
            study["models"]["device"] = device
            study["models"]["base"]["dtype"] = study["models"]["ft"]["dtype"] = dtype
            study["activations"]["dtype"] = "float32"
            runs[name] = run_study(load_config(study), stages=TORCH_STAGES, progress=False)
    return runs


def test_collection_on_the_gpu_in_bfloat16_matches_the_cpu(gpu_and_cpu_runs):
    gpu, cpu = (ActivationStore(gpu_and_cpu_runs[d] / "activations") for d in ("gpu", "cpu"))
    assert gpu.n_tokens == cpu.n_tokens and np.array_equal(gpu.token_ids, cpu.token_ids)
    a, b = gpu.read(), cpu.read()
    for m in range(2):
        rel = float((a[:, m] - b[:, m]).norm() / b[:, m].norm())
        assert 1e-4 < rel < 0.02, (m, rel)  # really bf16 (~3 significant digits), and close
    assert not torch.equal(a[:, 0], a[:, 1])


def test_a_study_trained_and_diffed_on_the_gpu_is_complete_and_loads_on_the_cpu(gpu_and_cpu_runs):
    run = gpu_and_cpu_runs["gpu"]
    assert gpu_and_cpu_runs["diff_devices"] == ["cuda", "cpu"]  # the study's device, then the CPU run's
    stages = read_manifest(run)["stages"]
    assert all(stages[s]["status"] == "complete" for s in TORCH_STAGES)
    metrics, reference = (read_manifest(gpu_and_cpu_runs[r])["stages"]["train"]["metrics"] for r in ("gpu", "cpu"))
    assert 0.8 <= metrics["l0_over_k"] <= 1.25
    for name in ("fve_base", "fve_ft"):  # same init and batches; only the arithmetic differs
        assert metrics[name] == pytest.approx(reference[name], abs=0.05), name
    cc = BatchTopKCrossCoder.from_pretrained(run / "crosscoder")  # saved from CUDA, read on a CPU
    assert cc.W_dec.device.type == "cpu"
    store = ActivationStore(run / "activations")
    cfg = load_config(run / "config.yaml")
    table = latent_table(cc, store, cfg.diffing)  # the diff stage ran on CUDA: the CPU agrees
    stored = pd.read_parquet(run / "latents.parquet")
    np.testing.assert_allclose(stored["beta_base"], table["beta_base"], rtol=1e-3, atol=1e-5)
    assert stored["attribution"].tolist() == table["attribution"].tolist()


def test_confirmation_on_the_gpu_gives_the_cpu_verdicts(tmp_path):
    """The planted causal world (one latent carries one category's answers): ablation and
    restore on CUDA score every question as on the CPU and reach the same verdicts."""
    build_causal_run(tmp_path / "cpu")
    shutil.copytree(tmp_path / "cpu", tmp_path / "gpu")
    on_cpu = cf.run_confirmation(tmp_path / "cpu" / "run", progress=False)
    on_gpu = cf.run_confirmation(tmp_path / "gpu" / "run", cf.ConfirmSettings(device="cuda"), progress=False)
    keys = ["category", "intervention", "draw", "scored_category"]
    a, b = (t.sort_values(keys).reset_index(drop=True) for t in (on_gpu, on_cpu))
    assert a[keys].equals(b[keys]) and a["latents"].map(tuple).tolist() == b["latents"].map(tuple).tolist()
    np.testing.assert_allclose(a["score_after"], b["score_after"])
    np.testing.assert_allclose(a["mass"], b["mass"], rtol=1e-4)
    assert a["status"].tolist() == b["status"].tolist()
    assert set(a.loc[a["status"] == cv.CONFIRMED, "category"]) == {"planted"}


def test_a_gpu_index_this_machine_lacks_is_refused_with_the_fix():
    """``models.device: cuda:N`` past the visible GPUs: one line naming the count, not a raw
    CUDA "invalid device ordinal" from inside a stage."""
    from mneme_core.collect.models import ModelError, resolve_device

    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ModelError, match="GPU\\(s\\) here .*CUDA_VISIBLE_DEVICES"):
        resolve_device(missing)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
