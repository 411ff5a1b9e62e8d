"""`mneme layers`: where along the depth the two models differ, on the study's own corpus."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from conftest import tiny_study_dict

from mneme_core import cli
from mneme_core.analysis.actdiff import relative_change
from mneme_core.collect.activations import ActivationStore


def test_profile_is_zero_before_the_changed_layer_and_equals_the_collected_store_at_the_study_layer(
    tiny_study, tiny_run, capsys
):
    """The tiny fine-tune perturbs layer 1's MLP: layer 0 is identical in both models, every
    later layer differs. At the study's own layer the profile is the mean relative change of
    exactly the tokens the collect stage stored (the same kept tokens, sinks dropped by the
    same rule), computed here from the store."""
    study = tiny_run / "config.yaml"
    assert cli.main(["-q", "layers", str(study), "--json", "--tokens", str(tiny_study.corpus.n_tokens)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["layer"] == tiny_study.models.layer == 2
    change = [row["rel_change"] for row in out["profile"]]
    assert len(change) == 4 and change[0] == 0.0 and min(change[1:]) > 0
    store = ActivationStore(tiny_run / "activations")
    stored = float(relative_change(store.read()).mean())
    assert out["profile"][2]["n_tokens"] == store.n_tokens
    assert change[2] == pytest.approx(stored, rel=1e-5)

    assert cli.main(["-q", "layers", str(study), "--tokens", "400"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "← models.layer" in lines[3] and lines[3].lstrip().startswith("2 ")
    assert sum("largest" in line for line in lines) == 1 and "█" in lines[2] and "█" not in lines[1]


def test_an_identical_pair_has_nothing_to_diff_and_bad_token_counts_are_refused(
    tiny_model_dirs, tiny_corpus, tmp_path, capsys
):
    base, _ = tiny_model_dirs
    study = tmp_path / "same.yaml"
    study.write_text(yaml.safe_dump(tiny_study_dict(base, base, tiny_corpus, tmp_path / "run")))
    assert cli.main(["-q", "layers", str(study), "--tokens", "300"]) == 0
    out = capsys.readouterr().out
    assert "nothing to diff" in out and "largest" not in out
    assert np.allclose([float(line.split()[1]) for line in out.splitlines()[1:5]], 0.0)
    assert cli.main(["layers", str(study), "--tokens", "0"]) == 2
    assert "--tokens must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # a scan writes nothing


def test_bfloat16_collection_is_scanned_in_bfloat16(tiny_model_dirs, tiny_corpus, tmp_path, capsys):
    """With ``activations.forward_dtype: bfloat16`` the scan runs the pair as collection
    does, so at the study's layer it still equals the store."""
    from mneme_core.common.config import load_config
    from mneme_core.run.pipeline import run_study

    data = tiny_study_dict(*tiny_model_dirs, tiny_corpus, tmp_path / "run")
    data["activations"]["forward_dtype"] = "bfloat16"
    run = run_study(load_config(data), stages=["collect"], progress=False)
    assert cli.main(["-q", "layers", str(run / "config.yaml"), "--json", "--tokens", "1024"]) == 0
    at_layer = json.loads(capsys.readouterr().out)["profile"][2]["rel_change"]
    assert at_layer == pytest.approx(
        float(relative_change(ActivationStore(run / "activations").read()).mean()), rel=1e-5
    )


def test_bad_models_or_an_empty_corpus_are_one_line_errors_and_the_corpus_is_read_first(
    tiny_model_dirs, tiny_corpus, tmp_path, capsys
):
    base, ft = tiny_model_dirs
    study = tmp_path / "bad.yaml"
    study.write_text(yaml.safe_dump(tiny_study_dict(base, tmp_path / "no_such_model", tiny_corpus, tmp_path / "run")))
    assert cli.main(["layers", str(study)]) == 2
    assert "no_such_model" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n' * 3)
    broken = tmp_path / "broken"  # the corpus is refused before this empty model folder is read
    broken.mkdir()
    study.write_text(yaml.safe_dump(tiny_study_dict(base, broken, empty, tmp_path / "run")))
    assert cli.main(["layers", str(study)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("mneme: error: the corpus gave no text")


def test_a_small_host_budget_scans_in_smaller_batches_with_the_same_answer(tiny_study, monkeypatch):
    """The host-memory budget only shrinks the batch: one context at a time gives the
    profile the configured batch gives."""
    from mneme_core.analysis import layers

    forwards = []
    real = layers._each_layer
    monkeypatch.setattr(layers, "_each_layer", lambda model, ids, *a: forwards.append(len(ids)) or real(model, ids, *a))
    whole, _ = layers.scan_study(tiny_study, 600, progress=False)
    assert max(forwards) == tiny_study.activations.batch_size
    forwards.clear()
    monkeypatch.setattr(layers, "HOST_BYTES", 1)
    single, _ = layers.scan_study(tiny_study, 600, progress=False)
    assert set(forwards) == {1}
    assert (single["n_tokens"] == whole["n_tokens"]).all() and whole["n_tokens"].min() > 0
    np.testing.assert_allclose(single["rel_change"], whole["rel_change"], rtol=1e-5)
