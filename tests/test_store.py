"""The run directory: atomic writes, stage status, column merges, schema checks."""

from __future__ import annotations

import json
import multiprocessing
import os

import pandas as pd
import pytest

from mneme_core import RunError, open_run
from mneme_core.common.atomic import atomic_path, write_parquet
from mneme_core.run.store import (
    SCHEMA_VERSION,
    init_run,
    merge_latent_columns,
    set_stage,
    update_manifest,
)

CFG = {"name": "s", "models": {"layer": 3}, "corpus": {"files": ["a.txt"]}}


def test_init_set_stage_and_open(tmp_path):
    init_run(tmp_path, CFG, provenance=[{"name": "a.txt", "licence": "public domain"}])
    set_stage(tmp_path, "collect", "complete", metrics={"tokens": 10})
    run = open_run(tmp_path)
    assert run.manifest["schema_version"] == SCHEMA_VERSION
    assert run.stage_status("collect") == "complete"
    assert run.stage_metrics("collect") == {"tokens": 10}
    assert run.missing_stages()[0] == "train"
    assert run.manifest["provenance"][0]["licence"] == "public domain"


def test_rerun_with_other_config_is_refused(tmp_path):
    init_run(tmp_path, CFG)
    init_run(tmp_path, {**CFG, "run_dir": "elsewhere"})  # run_dir alone may differ
    with pytest.raises(RunError, match="different config.*corpus"):
        init_run(tmp_path, {**CFG, "corpus": {"files": ["b.txt"]}})


def test_a_run_made_before_a_new_config_field_is_still_the_same_study(tmp_path):
    """A run written by an older MNEME lacks fields added since; at their defaults it resumes."""
    from mneme_core.common.config import StudyConfig, build

    full = build(StudyConfig, CFG).to_dict()
    older = json.loads(json.dumps(full))
    del older["evaluation"]["improved_latent_direction"]  # a field this version added
    init_run(tmp_path, older)
    init_run(tmp_path, full)  # the same study: resumes
    changed = json.loads(json.dumps(full))
    changed["evaluation"]["improved_latent_direction"] = "both"
    with pytest.raises(RunError, match="different config.*evaluation"):
        init_run(tmp_path, changed)


def _count_up(run_path: str, times: int) -> None:
    def bump(m: dict) -> None:
        m["count"] = m.get("count", 0) + 1

    for _ in range(times):
        update_manifest(run_path, bump)


def test_manifest_updates_from_several_processes_are_never_lost(tmp_path):
    """The lock serialises each read-modify-write (torchrun ranks, a CLI beside the dashboard)."""
    init_run(tmp_path, CFG)
    procs = [multiprocessing.Process(target=_count_up, args=(str(tmp_path), 25)) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    assert open_run(tmp_path).manifest["count"] == 100


def test_merge_latent_columns_keeps_other_stages_columns(tmp_path):
    init_run(tmp_path, CFG)
    merge_latent_columns(tmp_path, pd.DataFrame({"latent": [2, 0, 1], "rel_norm": [0.2, 0.0, 0.1]}))
    merge_latent_columns(tmp_path, pd.DataFrame({"latent": [0, 1, 2], "description": ["a", "b", "c"]}))
    merge_latent_columns(tmp_path, pd.DataFrame({"latent": [0, 1, 2], "rel_norm": [0.5, 0.6, 0.7]}))
    df = open_run(tmp_path).latents
    assert list(df["latent"]) == [0, 1, 2]
    assert list(df["description"]) == ["a", "b", "c"]
    assert list(df["rel_norm"]) == [0.5, 0.6, 0.7]


def test_contexts_of_one_latent_in_order(tmp_path):
    init_run(tmp_path, CFG)
    rows = [
        {"latent": lat, "kind": kind, "rank": r, "tokens": ["a", "b"], "acts": [0.0, 1.0], "max_act": 1.0}
        for lat in range(50)
        for kind in ("quantile", "top")
        for r in (1, 0)
    ]
    write_parquet(tmp_path / "contexts.parquet", pd.DataFrame(rows), row_group_size=16)
    ctx = open_run(tmp_path).contexts(7)
    assert set(ctx["latent"]) == {7}
    assert list(zip(ctx["kind"], ctx["rank"])) == [("top", 0), ("top", 1), ("quantile", 0), ("quantile", 1)]


def test_failed_atomic_write_leaves_old_file(tmp_path):
    target = tmp_path / "t.parquet"
    write_parquet(target, pd.DataFrame({"a": [1]}))
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert pd.read_parquet(target)["a"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_open_errors_are_readable(tmp_path):
    with pytest.raises(RunError, match="no run directory"):
        open_run(tmp_path / "missing")
    with pytest.raises(RunError, match="not a MNEME run"):
        open_run(tmp_path)
    (tmp_path / "run.json").write_text("{broken")
    with pytest.raises(RunError, match="not valid JSON"):
        open_run(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"schema_version": 0}))
    with pytest.raises(RunError, match="schema version 0"):
        open_run(tmp_path)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    assert os.path.exists(tmp_path / "run.json")


def test_a_model_rebuilt_in_place_is_not_resumed(tmp_path, tiny_model_dirs):
    """Same config, same path, other weights: the run's finished stages belong to the old
    weights, so the resume is refused; a byte-identical copy resumes."""
    import shutil

    from safetensors.torch import load_file, save_file

    from mneme_core.common.config import ModelsConfig, ModelSpec
    from mneme_core.run.model_files import model_prints

    ft = tmp_path / "ft"
    shutil.copytree(tiny_model_dirs[1], ft)
    models = ModelsConfig(base=ModelSpec(path=str(tiny_model_dirs[0])), ft=ModelSpec(path=str(ft)))
    run = tmp_path / "run"
    first = model_prints(models)
    assert set(first) == {"base", "ft"}
    init_run(run, CFG, model_files=first)
    weights = ft / "model.safetensors"
    shutil.copy2(weights, tmp_path / "same.safetensors")
    shutil.copy2(tmp_path / "same.safetensors", weights)  # rewritten, same bytes
    init_run(run, CFG, model_files=model_prints(models))
    tensors = load_file(str(weights))
    name = sorted(k for k in tensors if k.endswith("weight"))[-1]
    tensors[name] = tensors[name] + 1e-3  # "retrained": another RMU setting under the same path
    save_file(tensors, str(weights))
    with pytest.raises(RunError, match="fine-tuned model files changed"):
        init_run(run, CFG, model_files=model_prints(models))


def test_a_run_without_model_prints_takes_them_on_resume(tmp_path):
    init_run(tmp_path, CFG)  # as an older MNEME wrote it: no fingerprints
    assert "model_files" not in json.loads((tmp_path / "run.json").read_text())
    init_run(tmp_path, CFG, model_files={"ft": "abc"})
    assert json.loads((tmp_path / "run.json").read_text())["model_files"] == {"ft": "abc"}
    with pytest.raises(RunError, match="fine-tuned model"):
        init_run(tmp_path, CFG, model_files={"ft": "xyz"})
    init_run(tmp_path, CFG, model_files={})  # the model's files not found now: reading the run is still allowed


def test_an_edit_of_one_tensor_among_many_changes_the_fingerprint(tmp_path):
    """RMU rewrites a few matrices of a full checkpoint; size and header stay the same."""
    import torch
    from safetensors.torch import save_file

    from mneme_core.run.model_files import file_print

    tensors = {f"layers.{i:02d}.mlp.weight": torch.randn(256, 256) for i in range(40)}
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    before = file_print(path)
    for i in range(40):
        edited = dict(tensors)
        edited[f"layers.{i:02d}.mlp.weight"] = tensors[f"layers.{i:02d}.mlp.weight"] * 1.001
        save_file(edited, str(path))
        assert file_print(path) != before, f"an edit of tensor {i} went unseen"
    save_file(tensors, str(path))
    assert file_print(path) == before
