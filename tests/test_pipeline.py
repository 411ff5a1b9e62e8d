"""The pipeline end to end on real tiny models: stages in order, resume, force, overrides."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, TINY_BENCHMARK, rank_logs, tiny_study_dict, torchrun_cli

from mneme_core import cli, open_run
from mneme_core.collect.activations import ActivationStore
from mneme_core.common.errors import RunError
from mneme_core.run.pipeline import StageError, override_section, rerun_with, run_config, run_study
from mneme_core.run.store import STAGES, read_manifest

LATENT_COLUMNS = [
    "latent",
    "dec_norm_base",
    "dec_norm_ft",
    "rel_norm",
    "dec_cos",
    "freq",
    "max_act",
    "beta_err_base",
    "beta_err_ft",
    "beta_recon_base",
    "beta_recon_ft",
    "beta_err_own_base",
    "beta_err_own_ft",
    "beta_recon_own_base",
    "beta_recon_own_ft",
    "nu_err",
    "nu_recon",
    "shift",
    "attribution",
    "label_by_norm",
]


def _mtimes(run_dir: Path, *names: str) -> dict[str, int]:
    files = [p for n in names for p in sorted((run_dir / n).rglob("*") if (run_dir / n).is_dir() else [run_dir / n])]
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in files if p.is_file() and ".lock" not in p.name}


def _stage_times(run_dir: Path) -> dict[str, str]:
    return {s: e.get("at") for s, e in read_manifest(run_dir)["stages"].items()}


def test_tiny_run_has_every_stage_and_the_latents_contract(tiny_run):
    run = open_run(tiny_run)
    assert run.missing_stages() == []
    latents = run.latents
    assert set(LATENT_COLUMNS) <= set(latents.columns)
    assert list(latents["latent"]) == list(range(64))
    assert set(latents["attribution"]) <= {"amplified", "suppressed", "unchanged"}
    assert set(latents["label_by_norm"]) <= {"base_only", "ft_only", "shared", "other"}
    fired = latents["freq"] > 0
    assert fired.any() and latents.loc[fired, "beta_err_base"].notna().all()
    assert (tiny_run / "config.yaml").is_file()
    assert run.stage_metrics("diff")["n_latents"] == 64


def test_cli_run_fails_at_a_stage_then_resumes_without_recomputing(tmp_path, tiny_model_dirs, tiny_corpus, capsys):
    """A stage raising mid-way leaves earlier stages complete; the rerun skips them."""
    bench = tmp_path / "bench.csv"  # not there yet: the evaluate stage will fail
    data = tiny_study_dict(*tiny_model_dirs, tiny_corpus, tmp_path / "run", bench)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "run"

    assert cli.main(["-q", "run", str(study)]) == 2
    err = capsys.readouterr().err
    assert "stage 'evaluate' failed" in err and "bench.csv" in err
    manifest = read_manifest(run_dir)
    assert [manifest["stages"][s]["status"] for s in STAGES] == ["complete"] * 6 + ["failed"]
    before_files = _mtimes(run_dir, "activations", "crosscoder", "contexts.parquet", "histograms.parquet")
    before_at = _stage_times(run_dir)
    assert any(k.startswith("activations/") for k in before_files) and "crosscoder/model.safetensors" in before_files

    bench.write_text(TINY_BENCHMARK)
    assert cli.main(["-q", "run", str(study)]) == 0
    assert _mtimes(run_dir, "activations", "crosscoder", "contexts.parquet", "histograms.parquet") == before_files
    after_at = _stage_times(run_dir)
    assert {s: after_at[s] for s in STAGES[:6]} == {s: before_at[s] for s in STAGES[:6]}
    run = open_run(run_dir)
    assert run.missing_stages() == []
    assert set(LATENT_COLUMNS) <= set(run.latents.columns)
    assert run.evaluation is not None and len(run.benchmark) == len(TINY_BENCHMARK.splitlines()) - 1


def test_killed_run_resumes_without_recomputing_collection(tmp_path, tiny_model_dirs, tiny_corpus):
    """SIGKILL a real `mneme run` once collection is done; the rerun keeps its shards."""
    data = tiny_study_dict(*tiny_model_dirs, tiny_corpus, tmp_path / "run")
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mneme_core.cli", "-q", "run", str(study), "--stages", "collect,train,diff"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        while proc.poll() is None:
            manifest_path = run_dir / "run.json"
            if manifest_path.is_file():
                stages = json.loads(manifest_path.read_text())["stages"]
                if stages["collect"]["status"] == "complete":
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.05)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert read_manifest(run_dir)["stages"]["collect"]["status"] == "complete", proc.stderr.read().decode()[-2000:]
    shards = _mtimes(run_dir, "activations")
    collect_at = _stage_times(run_dir)["collect"]

    run_study(run_config(run_dir), stages=["collect", "train", "diff"], progress=False)
    assert _mtimes(run_dir, "activations") == shards
    assert _stage_times(run_dir)["collect"] == collect_at
    run = open_run(run_dir)
    assert [run.stage_status(s) for s in ("collect", "train", "diff")] == ["complete"] * 3
    assert {"shift", "attribution", "beta_err_base"} <= set(run.latents.columns)


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "copy"))


def test_force_reruns_the_stage_and_later_ones_only(run_copy):
    before = _stage_times(run_copy)
    time.sleep(1.1)  # manifest times have one-second resolution
    run_study(run_config(run_copy), stages=["categories", "evaluate"], force=["evaluate"], progress=False)
    after = _stage_times(run_copy)
    assert after["evaluate"] != before["evaluate"]
    assert {s: after[s] for s in STAGES[:6]} == {s: before[s] for s in STAGES[:6]}


def test_under_torchrun_only_rank_0_runs_the_stages_after_training(run_copy, monkeypatch):
    """A second rank takes part in collection and training only; the later stages read the
    whole run in one process, and a second rank re-running them would write the same files
    twice. Forced here, so a rank that ran them would rewrite their outputs."""
    outputs = [run_copy / f for f in ("latents.parquet", "contexts.parquet", "evaluation.json")]
    before = [p.stat().st_mtime_ns for p in outputs], _stage_times(run_copy)
    time.sleep(1.1)  # manifest times have one-second resolution
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    run_study(run_config(run_copy), stages=STAGES[2:], force=True, progress=False)
    assert ([p.stat().st_mtime_ns for p in outputs], _stage_times(run_copy)) == before
    monkeypatch.setenv("RANK", "0")
    run_study(run_config(run_copy), stages=["evaluate"], force=True, progress=False)
    assert (run_copy / "evaluation.json").stat().st_mtime_ns != before[0][2]


def test_torchrun_runs_the_whole_study_through_the_cli(tmp_path, tiny_model_dirs, tiny_corpus, tiny_benchmark):
    """``torchrun --nproc_per_node 2 -m mneme_core.cli run STUDY.yaml``: both ranks collect
    and train, rank 0 alone runs the rest and reports, and the study ends complete. Rank 0's
    index is written 3 s late (``tests/_slow_finalize.py``), so a rank that went on to
    training without waiting for it would fail there."""
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump(tiny_study_dict(*tiny_model_dirs, tiny_corpus, tmp_path / "run", tiny_benchmark)))
    logs = tmp_path / "logs"
    proc = torchrun_cli(["run", str(study)], entry=[str(REPO / "tests" / "_slow_finalize.py")], log_dir=logs)
    (out0, err0), (out1, err1) = rank_logs(logs, 0), rank_logs(logs, 1)
    assert proc.returncode == 0, err0[-3000:] + err1[-3000:]
    run = open_run(tmp_path / "run")
    shards = ActivationStore(tmp_path / "run" / "activations").shards
    assert run.missing_stages() == [] and {s["rank"] for s in shards} == {0, 1}
    assert run.stage_metrics("train")["world_size"] == 2
    assert run.evaluation["P"] is not None and run.latents["category"].notna().any()
    # both ranks trained (world size 2 above); the later stages' progress shows on rank 0
    # only, and rank 0 alone reports
    for later in ("explain", "categories"):
        assert later in err0 and later not in err1, later
    assert "run ready:" in out0 and "run ready:" not in out1


def test_evaluate_command_overrides_the_benchmark(run_copy, tmp_path, capsys):
    other = tmp_path / "other.csv"
    other.write_text("category,score_before,score_after,n_questions\nvirology,0.9,0.2,300\nanatomy,0.8,0.8,300\n")
    assert cli.main(["-q", "evaluate", str(run_copy), "--benchmark", str(other)]) == 0
    run = open_run(run_copy)
    assert run.manifest["config"]["evaluation"]["benchmark"] == str(other)
    assert sorted(run.benchmark["category"]) == ["anatomy", "virology"]
    assert run.evaluation["benchmark_source"] == str(other)
    assert str(other) in (run_copy / "config.yaml").read_text()


def test_a_second_torchrun_rank_leaves_one_process_commands_to_rank_0(run_copy, tmp_path, monkeypatch, capsys):
    """``mneme evaluate`` changes the run's config and rewrites its evaluation: under torchrun
    a second rank doing it too would race rank 0 and print a stale record."""
    other = tmp_path / "other.csv"
    other.write_text("category,score_before,score_after,n_questions\nvirology,0.9,0.2,300\n")
    before = (run_copy / "run.json").read_bytes(), (run_copy / "evaluation.json").read_bytes()
    monkeypatch.setenv("RANK", "1")
    assert cli.main(["evaluate", str(run_copy), "--benchmark", str(other)]) == 0
    assert ((run_copy / "run.json").read_bytes(), (run_copy / "evaluation.json").read_bytes()) == before
    assert capsys.readouterr().out == ""


def test_unknown_stage_and_different_config_are_refused(run_copy, tiny_study):
    with pytest.raises(RunError, match="unknown stage 'trian'"):
        run_study(run_config(run_copy), stages=["trian"])
    changed = run_config(run_copy).to_dict()
    changed["crosscoder"]["k"] = 5
    from mneme_core.common.config import load_config

    with pytest.raises(RunError, match="different config.*crosscoder"):
        run_study(load_config(changed))


def test_interpret_command_explains_the_named_latents_and_keeps_the_others(run_copy, capsys):
    latents = open_run(run_copy).latents
    described = set(latents.loc[latents["description"].notna(), "latent"])
    # one more latent: 11 described stays under the categories stage's UMAP minimum (its
    # JIT warm-up would dominate the suite); the UMAP path is the categories tests' job
    todo = [int(i) for i in latents.loc[(latents["freq"] > 0) & latents["description"].isna(), "latent"][:1]]
    assert todo, "the tiny run should leave some fired latents undescribed (max_latents)"
    spec = ",".join(map(str, todo))
    assert cli.main(["-q", "interpret", str(run_copy), "--latents", spec, "--explainer", "offline"]) == 0
    run = open_run(run_copy)
    assert run.manifest["config"]["interpret"]["latents"] == spec
    now = run.latents.set_index("latent")
    assert now.loc[todo, "description"].notna().all()
    assert now.loc[sorted(described), "description"].notna().all()
    assert now.loc[todo, "category"].notna().all()
    assert run.stage_status("interpret") == run.stage_status("categories") == "complete"
    assert run.stage_status("evaluate") == "complete"  # the prediction was re-made from the new categories


def test_rerunning_a_stage_makes_later_finished_stages_stale(run_copy):
    explained = set(pd.read_parquet(run_copy / "explanations.parquet")["latent"])
    run_study(run_config(run_copy), stages=["contexts"], force=True, progress=False)
    assert (run_copy / "explanations.parquet").is_file()  # the same dictionary: its descriptions stay
    run = open_run(run_copy)
    assert run.stage_status("contexts") == "complete"
    assert [run.stage_status(s) for s in ("interpret", "categories", "evaluate")] == ["stale"] * 3
    assert run.missing_stages() == ["interpret", "categories", "evaluate"]
    assert "contexts" in run.manifest["stages"]["evaluate"]["reason"]
    run_study(run_config(run_copy), progress=False)  # `mneme run` brings them up to date
    assert open_run(run_copy).missing_stages() == []
    assert open_run(run_copy).manifest["stages"]["evaluate"].get("reason") is None  # no longer stale, nor said to be
    assert explained <= set(pd.read_parquet(run_copy / "explanations.parquet")["latent"])


def test_a_contexts_pass_that_cannot_run_keeps_the_explanations(run_copy):
    """A new dictionary's contexts pass drops the old explanations only once its inputs
    have loaded: without the activation store it fails and the file is still there."""
    shutil.rmtree(run_copy / "crosscoder")
    override_section(run_copy, "crosscoder", {"n_latents": 96})
    run_study(run_config(run_copy), stages=["train", "diff"], force=True, progress=False)
    shutil.rmtree(run_copy / "activations")
    with pytest.raises(StageError, match="contexts"):
        run_study(run_config(run_copy), stages=["contexts"], force=True, progress=False)
    assert (run_copy / "explanations.parquet").is_file()


def test_retraining_at_another_size_gives_a_latents_table_of_the_new_dictionary(run_copy):
    """The diff stage sets the table's rows: a dictionary retrained larger in the same run
    (or in a copy of it) is not cut to the old table's latents, and the old dictionary's
    descriptions and categories do not linger on the new latents."""
    old = open_run(run_copy).latents
    assert len(old) == 64 and {"description", "category"} <= set(old.columns)
    override_section(run_copy, "crosscoder", {"n_latents": 96})
    shutil.rmtree(run_copy / "crosscoder")  # the old plan's checkpoints would be refused
    run_study(run_config(run_copy), stages=["train", "diff"], force=True, progress=False)
    run = open_run(run_copy)
    assert run.latents["latent"].tolist() == list(range(96))
    assert run.latents["attribution"].notna().all()
    assert not {"description", "category"} & set(run.latents.columns)
    assert run.missing_stages() == ["contexts", "interpret", "categories", "evaluate"]
    run_study(run_config(run_copy), progress=False)  # the new dictionary's contexts, descriptions, ...
    described = open_run(run_copy).latents.dropna(subset=["description"])
    # every description is of a latent the new dictionary gave contexts to: none left over
    # from the old dictionary's pass under the same number
    with_contexts = set(pd.read_parquet(run_copy / "contexts.parquet", columns=["latent"])["latent"])
    assert len(described) and set(described["latent"]) <= with_contexts
    explained = pd.read_parquet(run_copy / "explanations.parquet")
    assert set(explained["latent"]) == set(described["latent"])
    assert len(explained) == open_run(run_copy).stage_metrics("interpret")["n_explained"]  # this pass's only


def test_dashboard_command_refuses_a_missing_run(tmp_path, capsys):
    assert cli.main(["dashboard", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has the GPU the study asks for")
def test_a_gpu_study_on_a_machine_without_one_says_so_and_how_to_go_on(tmp_path, tiny_model_dirs, tiny_corpus, capsys):
    study = tiny_study_dict(*tiny_model_dirs, tiny_corpus, tmp_path / "run")
    study["models"]["device"] = "cuda"
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    assert cli.main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "stage 'collect' failed" in err and "no CUDA GPU" in err and "auto or cpu" in err
    assert "Traceback" not in err


def test_null_control_identical_models_attribute_nothing_and_predict_nothing(tmp_path, tiny_model_dirs, tiny_corpus):
    """The whole pipeline at its defaults on a model against itself: no latent amplified
    or suppressed, every latent shared by its decoder norms, an empty prediction from
    MNEME and from the dictionary-free baseline alike."""
    import numpy as np

    from mneme_core.common.config import load_config

    base, _ = tiny_model_dirs
    bench = tmp_path / "bench.csv"
    lines = TINY_BENCHMARK.strip().splitlines()
    bench.write_text(
        "\n".join(
            [lines[0]]
            + [",".join([r.split(",")[0], r.split(",")[1], r.split(",")[1], r.split(",")[3]]) for r in lines[1:]]
        )
        + "\n"
    )  # score_after = score_before
    cfg = load_config(tiny_study_dict(base, base, tiny_corpus, tmp_path / "run", bench))
    run = open_run(run_study(cfg, progress=False))
    latents = run.latents
    assert (latents["attribution"] == "unchanged").all(), latents["attribution"].value_counts()
    fired = latents["n_fires"] > 0
    np.testing.assert_allclose(latents.loc[fired, "rel_norm"], 0.5, atol=1e-3)
    assert run.stage_metrics("collect")["computed_tokens"] > 0
    ev = run.evaluation
    assert ev["T"] == [] and ev["P"] == [] and ev["metrics"]["mneme"]["n_predicted"] == 0
    assert ev["metrics"]["activation_diff"]["set"] == []


def test_published_run_relabels_its_context_diffs_with_a_new_taxonomy(run_copy, tmp_path):
    """A run without its activation store (a published demo run) still moves the
    dictionary-free baseline to a new taxonomy: the kept context texts are relabelled,
    their measured differences unchanged."""
    from mneme_core.analysis.actdiff import CONTEXT_DIFFS_FILE

    before = pd.read_parquet(run_copy / CONTEXT_DIFFS_FILE)
    shutil.rmtree(run_copy / "activations")
    labels = tmp_path / "two.txt"
    labels.write_text("astronomy: stars, planets, space\ncooking: recipes, kitchens, food\n")
    cfg = override_section(run_copy, "categories", {"taxonomies": [str(labels)]})
    run_study(cfg, stages=["categories"], force=True, progress=False)
    after = pd.read_parquet(run_copy / CONTEXT_DIFFS_FILE)
    assert set(after["category"]) <= {"astronomy", "cooking"} and not set(before["category"]) <= {
        "astronomy",
        "cooking",
    }
    assert (
        after["rel_diff"].tolist() == before["rel_diff"].tolist() and after["text"].tolist() == before["text"].tolist()
    )


def test_a_refused_or_failed_override_leaves_the_runs_settings(run_copy, tmp_path, monkeypatch, capsys):
    """`mneme evaluate` / `mneme interpret` with a benchmark that is not there, a latent the
    run does not have, or an explainer whose endpoint does not answer: the run keeps its
    settings (so the study's own config still resumes it), and what was refused up front
    keeps its finished stages too."""

    def state() -> tuple[bytes, dict, dict]:
        m = open_run(run_copy).manifest
        return (run_copy / "config.yaml").read_bytes(), m["config"], {s: v["status"] for s, v in m["stages"].items()}

    before = state()
    assert cli.main(["-q", "evaluate", str(run_copy), "--benchmark", str(tmp_path / "missing.csv")]) == 2
    assert "benchmark file not found" in capsys.readouterr().err
    assert cli.main(["-q", "interpret", str(run_copy), "--latents", "99999"]) == 2
    assert "that the run does not have" in capsys.readouterr().err
    assert state() == before
    # a failure inside the stage: the settings go back, the stage says it failed
    dead_endpoint = "http://127.0.0.1:9/v1"  # the discard port: nothing listens
    args = ["-q", "interpret", str(run_copy), "--explainer", "openai", "--base-url", dead_endpoint, "--model", "m"]
    args += ["--latents", "1"]
    assert cli.main(args) == 2
    capsys.readouterr()
    yaml_now, config_now, stages_now = state()
    assert (yaml_now, config_now) == before[:2] and stages_now["interpret"] == "failed"
    run_study(run_config(run_copy), progress=False)  # the study's own settings resume it
    assert open_run(run_copy).missing_stages() == []


def test_evaluate_records_a_relative_benchmark_path_from_where_it_was_given(run_copy, tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    (here / "bench.csv").write_text("category,score_before,score_after,n_questions\nvirology,0.9,0.2,300\n")
    monkeypatch.chdir(here)
    assert cli.main(["-q", "evaluate", str(run_copy), "--benchmark", "bench.csv"]) == 0
    assert open_run(run_copy).manifest["config"]["evaluation"]["benchmark"] == str(here / "bench.csv")
    monkeypatch.chdir(tmp_path)  # resumed from elsewhere, it still finds the file
    run_study(run_config(run_copy), stages=["evaluate"], force=True, progress=False)
    assert sorted(open_run(run_copy).benchmark["category"]) == ["virology"]


def test_an_override_whose_own_stage_finished_keeps_its_settings_when_a_later_stage_fails(run_copy):
    """New descriptions were written with the new explainer settings: if categorising them
    then fails, the run's settings must still be the ones its descriptions came from."""
    shutil.rmtree(run_copy / "lancedb")
    (run_copy / "lancedb").write_text("a file where the description index goes")
    with pytest.raises(StageError, match="categories"):
        rerun_with(run_copy, "interpret", {"max_latents": 3}, ["interpret", "categories", "evaluate"], progress=False)
    manifest = open_run(run_copy).manifest
    assert manifest["stages"]["interpret"]["status"] == "complete"
    assert manifest["stages"]["categories"]["status"] == "failed"
    assert manifest["config"]["interpret"]["max_latents"] == 3 == run_config(run_copy).interpret.max_latents
