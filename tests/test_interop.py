"""Interop: dictionary_learning's cross-coder layout both ways, imports that skip training,
and cross-coders and runs through a hub (a real HTTP server on 127.0.0.1, no network)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from _hubserver import fake_hub
from conftest import tiny_study_dict
from safetensors.torch import save_file

from mneme_core import cli
from mneme_core.common.errors import InteropError
from mneme_core.common.hub import Hub
from mneme_core.dictionary.crosscoder import BatchTopKCrossCoder
from mneme_core.dictionary.interop import (
    export_crosscoder,
    read_crosscoder,
    write_dictionary_learning,
)
from mneme_core.run.pipeline import run_config, run_study
from mneme_core.run.reader import Run, open_run
from mneme_core.run.store import read_manifest

D, F, K = 8, 32, 3


@pytest.fixture(autouse=True)
def hub_cache(tmp_path, monkeypatch):
    """huggingface_hub's default cache in the test's folder, so nothing lands in ~/.cache."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    return tmp_path / "hf_cache"


def _x(n: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, 2, D, generator=gen) + 0.5


def _trained_like(seed: int = 1) -> BatchTopKCrossCoder:
    """A cross-coder with unequal decoder norms, biases, a scale ≠ 1 and a calibrated θ."""
    m = BatchTopKCrossCoder(D, F, K, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.W_dec.mul_(torch.rand(2, F, 1, generator=gen) * 2)
        m.b_enc.copy_(0.1 * torch.randn(F, generator=gen))
        m.b_dec.copy_(0.1 * torch.randn(2, D, generator=gen))
    m.fit_normalization(_x(256, 7))
    m.calibrate_threshold([_x(128, 8)])
    assert float(m.norm_scale[0]) != pytest.approx(1.0) and float(m.threshold) > 0
    return m


@pytest.mark.parametrize("legacy", [False, True], ids=["normaliser", "legacy"])
def test_export_then_import_gives_identical_outputs(tmp_path, legacy):
    model = _trained_like()
    model.save(tmp_path / "mneme")
    export_crosscoder(tmp_path / "mneme", tmp_path / "dl", legacy=legacy)
    back, record = read_crosscoder(tmp_path / "dl")
    assert record["format"] == "dictionary_learning" and len(record["sha256"]) == 64
    config = json.loads((tmp_path / "dl" / "config.json").read_text())
    assert config == {
        "activation_dim": D,
        "dict_size": F,
        "num_layers": 2,
        "k": K,
        "code_normalization": "CROSSCODER",
        **({} if legacy else {"target_rms": 1.0}),
    }
    x = _x(64, 9)  # not the calibration tokens: none of them sits exactly at θ
    for use_threshold in (True, False):
        f, f_back = model.encode(x, use_threshold), back.encode(x, use_threshold)
        assert torch.equal(f > 0, f_back > 0)
        torch.testing.assert_close(f_back, f, rtol=1e-5, atol=1e-6)
    f = model.encode(x)
    torch.testing.assert_close(back.decode(f), model.decode(f), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(back(x), model(x), rtol=1e-5, atol=1e-5)
    if not legacy:  # MNEME's tensors travel as they are
        assert all(torch.equal(a, b) for a, b in zip(model.tensors().values(), back.tensors().values()))


def _dl_state_dict(normaliser: bool, seed: int = 3) -> dict[str, torch.Tensor]:
    """A BatchTopKCrossCoder state dict as dictionary_learning writes it (names, shapes, dtypes)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {
        "encoder.weight": torch.randn(2, D, F, generator=gen) / D**0.5,
        "encoder.bias": 0.1 * torch.randn(F, generator=gen),
        "decoder.weight": torch.randn(2, F, D, generator=gen) * torch.rand(2, F, 1, generator=gen),
        "decoder.bias": 0.1 * torch.randn(2, D, generator=gen),
        "threshold": torch.tensor(0.05),
        "k": torch.tensor(K, dtype=torch.int32),
        "code_normalization_id": torch.tensor(1),
    }
    if normaliser:
        std = 0.5 + torch.rand(2, D, generator=gen)
        sd["activation_mean"] = torch.randn(2, D, generator=gen)
        sd["activation_std"] = std
        sd["target_rms"] = torch.tensor(1.0)
        sd["activation_global_scale"] = 1.0 / torch.sqrt(std.pow(2).sum(-1) + 1e-8)
    return sd


@pytest.mark.parametrize("normaliser", [True, False], ids=["normaliser", "raw"])
def test_dictionary_learning_state_dict_encodes_as_computed_by_hand(tmp_path, normaliser):
    sd = _dl_state_dict(normaliser)
    folder = tmp_path / "dl"
    folder.mkdir()
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"activation_dim": D, "dict_size": F, "num_layers": 2, "k": K}))
    model, record = read_crosscoder(folder)
    assert record["format"] == "dictionary_learning" and (model.d_model, model.n_latents, model.k) == (D, F, K)

    # by hand, from the raw tensors: normalise, encode, threshold the scaled code, decode, undo
    x = _x(40, 4)
    mean = sd["activation_mean"] if normaliser else torch.zeros(2, D)
    g = sd["activation_global_scale"] if normaliser else torch.ones(2)
    x_n = (x - mean) * g[:, None]
    pre = x_n[:, 0] @ sd["encoder.weight"][0] + x_n[:, 1] @ sd["encoder.weight"][1] + sd["encoder.bias"]
    f = torch.relu(pre)
    weight = sd["decoder.weight"].norm(dim=2).sum(0)  # CROSSCODER: Σ_m ‖W_dec[m, j]‖
    codes = f * (f * weight > sd["threshold"])
    recon = torch.stack(
        [(codes @ sd["decoder.weight"][m] + sd["decoder.bias"][m]) / g[m] + mean[m] for m in range(2)], 1
    )
    top = torch.zeros(f.numel(), dtype=torch.bool)
    top[torch.topk((f * weight).flatten(), K * len(x)).indices] = True

    assert (codes > 0).sum() > 0
    torch.testing.assert_close(model.encode(x), codes, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.encode(x, use_threshold=False), f * top.view_as(f), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.decode(codes), recon, rtol=1e-4, atol=1e-4)


def _bad(sd: dict[str, torch.Tensor], **change: torch.Tensor | None) -> dict[str, torch.Tensor]:
    out = dict(sd)
    for name, value in change.items():
        name = name.replace("__", ".")
        if value is None:
            out.pop(name)
        else:
            out[name] = value
    return out


BAD = {
    "missing decoder bias": (dict(decoder__bias=None), r"no tensor 'decoder.bias' \(expected shape \(2, 8\)\)"),
    "decoder of the wrong width": (
        dict(decoder__weight=torch.zeros(2, F, D + 1)),
        r"'decoder.weight' has shape \(2, 32, 9\), expected \(2, 32, 8\)",
    ),
    "three models": (dict(encoder__weight=torch.zeros(3, D, F)), r"shape \(3, 8, 32\).*exactly two models"),
    "missing k": (dict(k=None), r"no tensor 'k' \(expected shape \(\)\)"),
    "SAE code normalisation": (
        dict(code_normalization_id=torch.tensor(2)),
        r"'code_normalization_id' is 2.*CROSSCODER",
    ),
    "per-dimension normaliser": (dict(activation_global_scale=torch.ones(2)), r"per-dimension normaliser"),
    "unknown tensor": (dict(bias=torch.zeros(1)), r"unexpected tensor 'bias'"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_state_dicts_are_refused_with_one_line_naming_the_tensor(tmp_path, case):
    change, pattern = BAD[case]
    path = tmp_path / "cc.safetensors"
    save_file(_bad(_dl_state_dict(normaliser=True), **change), str(path))
    with pytest.raises(InteropError, match=pattern) as info:
        read_crosscoder(path)
    assert "\n" not in str(info.value)


def test_pickles_and_missing_sources_are_refused(tmp_path):
    (tmp_path / "ae.pt").write_bytes(b"not unpickled")
    with pytest.raises(InteropError, match=r"ae\.pt: pickled checkpoints are never loaded"):
        read_crosscoder(tmp_path)
    with pytest.raises(InteropError, match="no such file or folder"):
        read_crosscoder(tmp_path / "nothing" / "here")


def test_cli_commands_exist(capsys):
    for command in ("import-crosscoder", "export-crosscoder", "push", "pull"):
        with pytest.raises(SystemExit) as exit_:
            cli.main([command, "--help"])
        assert exit_.value.code == 0
        assert f"usage: mneme {command}" in capsys.readouterr().out


def _fails_cleanly(capsys, argv: list[str], needle: str) -> None:
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err


def test_imported_crosscoder_runs_the_diff_stage_like_the_original(tiny_run, tmp_path, capsys):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    assert cli.main(["export-crosscoder", str(tiny_run), str(tmp_path / "dl")]) == 0
    _fails_cleanly(
        capsys, ["import-crosscoder", str(tmp_path / "dl"), str(run)], "already has a cross-coder; pass --force"
    )

    assert cli.main(["import-crosscoder", str(tmp_path / "dl"), str(run), "--force"]) == 0
    manifest = read_manifest(run)
    train = manifest["stages"]["train"]
    assert train["status"] == "complete" and train["metrics"]["imported"] is True
    assert train["metrics"]["format"] == "dictionary_learning" and train["metrics"]["source"] == str(tmp_path / "dl")
    assert manifest["stages"]["diff"]["status"] == "stale"  # built on the replaced cross-coder
    assert any(p.get("kind") == "crosscoder" and p["source"] == str(tmp_path / "dl") for p in manifest["provenance"])

    run_study(run_config(run), stages=["diff"], progress=False)
    assert open_run(run).stage_status("diff") == "complete"
    cols = ["latent", "dec_norm_base", "dec_norm_ft", "rel_norm", "beta_err_base", "beta_err_ft", "freq", "attribution"]
    pd.testing.assert_frame_equal(open_run(run).latents[cols], open_run(tiny_run).latents[cols])


def test_import_into_a_new_study_skips_training(tiny_run, tiny_model_dirs, tiny_corpus, tmp_path, capsys):
    """Imported before collection: `mneme run` collects, keeps the import, diffs."""
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(tiny_study_dict(*tiny_model_dirs, tiny_corpus, tmp_path / "run")))
    write_dictionary_learning(
        BatchTopKCrossCoder.from_pretrained(tiny_run / "crosscoder"), tmp_path / "dl", legacy=True
    )
    assert cli.main(["-q", "import-crosscoder", str(tmp_path / "dl"), str(study)]) == 0
    weights = (tmp_path / "run" / "crosscoder" / "model.safetensors").read_bytes()

    assert cli.main(["-q", "run", str(study), "--stages", "collect,train,diff"]) == 0
    run = open_run(tmp_path / "run")
    assert [run.stage_status(s) for s in ("collect", "train", "diff")] == ["complete"] * 3
    assert run.stage_metrics("train")["imported"] is True
    assert (tmp_path / "run" / "crosscoder" / "model.safetensors").read_bytes() == weights
    assert len(run.latents) == 64 and run.latents["freq"].gt(0).any()


def test_import_checks_the_width_against_the_runs_activations(tiny_run, tmp_path, capsys):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    _trained_like().save(tmp_path / "narrow")
    _fails_cleanly(
        capsys,
        ["import-crosscoder", str(tmp_path / "narrow"), str(run), "--force"],
        f"has d_model {D}, this run's activations have 32",
    )


def test_crosscoder_push_and_from_pretrained_through_a_hub_then_offline(tmp_path):
    model = _trained_like()
    cache = tmp_path / "cache"
    with fake_hub() as hub:
        url = model.push_to_hub("alice/cc", hub=Hub(endpoint=hub.url))
        assert url.startswith(hub.url)
        files = hub.files("model", "alice/cc")
        assert set(files) == {"README.md", "config.json", "model.safetensors"}
        assert "BatchTopKCrossCoder.from_pretrained('alice/cc')" in files["README.md"].decode()
        online = BatchTopKCrossCoder.from_pretrained("alice/cc", hub=Hub(endpoint=hub.url, cache_dir=cache))
    offline = BatchTopKCrossCoder.from_pretrained("alice/cc", hub=Hub(cache_dir=cache, local_files_only=True))
    x = _x(16, 5)
    for loaded in (online, offline):
        assert torch.equal(loaded.encode(x), model.encode(x)) and torch.equal(loaded(x), model(x))
    with pytest.raises(InteropError, match="cannot fetch model repo 'alice/other'"):
        BatchTopKCrossCoder.from_pretrained("alice/other", hub=Hub(cache_dir=cache, local_files_only=True))


def test_an_unreachable_hub_is_one_line(tmp_path, capsys):
    _trained_like().save(tmp_path / "run" / "crosscoder")
    _fails_cleanly(
        capsys,
        ["push", str(tmp_path / "run"), "alice/cc", "--crosscoder", "--endpoint", "http://127.0.0.1:9"],
        "cannot push to model repo 'alice/cc'",
    )


def test_import_a_dictionary_learning_crosscoder_from_a_hub_repo(tmp_path):
    sd = _dl_state_dict(normaliser=False)
    save_file(sd, str(tmp_path / "model.safetensors"))
    with fake_hub() as hub:
        Hub(endpoint=hub.url).upload(
            "bob/dl-cc",
            {"model.safetensors": tmp_path / "model.safetensors"},
            repo_type="model",
            message="a dictionary_learning cross-coder",
        )
        model, record = read_crosscoder("bob/dl-cc", hub=Hub(endpoint=hub.url, cache_dir=tmp_path / "cache"))
        commit = hub.repos[("model", "bob/dl-cc")][-1][0]
    assert record["hub_repo"] == "bob/dl-cc" and record["revision"] == commit
    assert torch.equal(model.W_dec, sd["decoder.weight"]) and model.k == K


def test_run_push_and_pull_through_a_hub(tiny_run, tmp_path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    (run / "triage.sqlite").write_bytes(b"marks")
    (run / "crosscoder" / "checkpoints" / "step_1").mkdir(parents=True, exist_ok=True)
    (run / "crosscoder" / "checkpoints" / "step_1" / "state.json").write_text("{}")
    (run / "seeds" / "seed1").mkdir(parents=True)  # `mneme seeds` copies stay home; their record goes
    (run / "seeds" / "seed1" / "run.json").write_text("{}")
    (run / "seed_agreement.json").write_text('{"run_seed": 0, "seeds": []}')
    with fake_hub() as hub:
        assert cli.main(["push", str(run), "alice/study", "--endpoint", hub.url]) == 0
        pushed = hub.files("dataset", "alice/study")
        assert {"run.json", "latents.parquet", "crosscoder/model.safetensors", "README.md"} <= set(pushed)
        assert "seed_agreement.json" in pushed
        assert not [
            p
            for p in pushed
            if p.startswith(("activations/", "crosscoder/checkpoints/", "seeds/")) or p == "triage.sqlite"
        ]
        assert cli.main(["pull", "alice/study", str(tmp_path / "pulled"), "--endpoint", hub.url]) == 0
        cached = Run.from_pretrained("alice/study", hub=Hub(endpoint=hub.url, cache_dir=tmp_path / "cache"))
        assert cli.main(["push", str(run), "alice/cc", "--crosscoder", "--endpoint", hub.url]) == 0
        assert "model.safetensors" in hub.files("model", "alice/cc")
    pulled = open_run(tmp_path / "pulled")
    pd.testing.assert_frame_equal(pulled.latents, open_run(run).latents)
    pd.testing.assert_frame_equal(cached.latents, open_run(run).latents)
    assert pulled.manifest["provenance"][-1] == {"kind": "hub_run", "repo_id": "alice/study", "revision": "main"}
    assert (
        BatchTopKCrossCoder.from_pretrained(tmp_path / "pulled" / "crosscoder").k
        == open_run(run).stage_metrics("train")["k"]
    )


def test_forcing_earlier_stages_keeps_the_import_forcing_train_replaces_it(tiny_run, tmp_path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    write_dictionary_learning(BatchTopKCrossCoder.from_pretrained(tiny_run / "crosscoder"), tmp_path / "dl")
    cli.main(["-q", "import-crosscoder", str(tmp_path / "dl"), str(run), "--force"])
    weights = (run / "crosscoder" / "model.safetensors").read_bytes()
    run_study(run_config(run), stages=["collect", "train"], force=["collect"], progress=False)
    assert open_run(run).stage_metrics("train")["imported"] is True
    assert (run / "crosscoder" / "model.safetensors").read_bytes() == weights
    run_study(run_config(run), stages=["train"], force=True, progress=False)
    assert "imported" not in open_run(run).stage_metrics("train")
