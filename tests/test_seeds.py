"""``mneme seeds``: a run's dictionary retrained with other seeds on the same activations,
and the record of which predictions recur, on the tiny run built by the real pipeline."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from mneme_core.cli import main
from mneme_core.common.errors import RunError
from mneme_core.evaluation import evaluate as ev
from mneme_core.evaluation import seeds
from mneme_core.run.pipeline import override_section, run_config
from mneme_core.run.reader import open_run
from mneme_core.run.replica import replica
from mneme_core.run.store import REPLICAS_DIR, SEED_AGREEMENT_FILE, read_manifest

WEIGHTS = Path("crosscoder") / "model.safetensors"


@pytest.fixture(scope="module")
def measured(tiny_run, tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("seeds") / "run"
    shutil.copytree(tiny_run, run)  # the session's run stays as it is
    (run / "triage.sqlite").write_text("an auditor's marks")  # belong to the original's dictionary
    return run, seeds.measure(run, (0, 1, 2), progress=False)  # 0 is the run's own seed: not retrained


def test_a_copy_shares_the_store_and_retrains_only_the_dictionary(measured):
    run, record = measured
    assert record["run_seed"] == 0 and [row["seed"] for row in record["seeds"]] == [0, 1, 2]
    copy = run / REPLICAS_DIR / "seed1"
    assert record["copies"] == {"1": f"{REPLICAS_DIR}/seed1", "2": f"{REPLICAS_DIR}/seed2"}  # from the run
    store = sorted((run / "activations").iterdir())
    assert store and all(os.path.samefile(f, copy / "activations" / f.name) for f in store)  # linked, not redone
    assert run_config(copy).training.seed == 1 and run_config(copy).run_path == copy
    stages = read_manifest(copy)["stages"]
    assert all(stages[s]["status"] == "complete" for s in stages)
    assert stages["collect"] == read_manifest(run)["stages"]["collect"]  # the original's, not re-run
    mine, theirs = load_file(run / WEIGHTS), load_file(copy / WEIGHTS)
    assert not all(mine[k].equal(theirs[k]) for k in mine)  # another seed, another dictionary
    assert not (copy / "triage.sqlite").exists() and not (copy / REPLICAS_DIR).exists()


def test_the_record_holds_each_seeds_own_evaluation_and_quality(measured):
    run, record = measured
    for row in record["seeds"]:
        path = run if row["seed"] == 0 else run / REPLICAS_DIR / f"seed{row['seed']}"
        evaluation = json.loads((path / "evaluation.json").read_text())
        for direction, predicted in row["predicted"].items():
            sub = ev.direction_record(evaluation, direction)
            assert predicted == sorted(sub["P"])
            assert row["scores"][direction]["f1"] == sub["metrics"]["mneme"]["f1"]
        trained = read_manifest(path)["stages"]["train"]["metrics"]
        assert (row["fve_base"], row["fve_ft"]) == (trained["fve_base"], trained["fve_ft"])
        attribution = pd.read_parquet(path / "latents.parquet")["attribution"]
        assert (row["amplified"], row["suppressed"]) == (
            (attribution == "amplified").sum(),
            (attribution == "suppressed").sum(),
        )
    assert seeds.load(run) == record


def test_agreement_counts_the_seeds_that_predict_each_category():
    rows = [
        {"seed": 0, "predicted": {"degraded": ["animals", "plants"], "improved": []}},
        {"seed": 1, "predicted": {"degraded": ["plants"], "improved": []}},
        {"seed": 2, "predicted": {"degraded": ["plants", "weather"], "improved": []}},
    ]
    record = {"run_seed": 0, "seeds": rows}
    frame = seeds.agreement_frame(record, "degraded")
    assert frame["category"].tolist() == ["plants", "animals", "weather"]
    assert frame["seeds"].tolist() == [3, 1, 1]
    assert frame["seed 0"].tolist() == [True, True, False] and frame["seed 2"].tolist() == [True, False, True]
    note = seeds.agreement_note(record, "degraded")
    assert "Every one of 3 dictionary seeds predicts: plants." in note
    assert "animals (1 of 3), weather (1 of 3)" in note
    assert "None of 3" in seeds.agreement_note(record, "improved")


def test_a_record_says_when_the_run_changed_since(measured, tmp_path):
    run, record = measured
    assert "earlier state" not in seeds.agreement_note(record, "degraded", open_run(run))
    moved = tmp_path / "moved"  # a copy, e.g. published: the same run, the same record
    shutil.copytree(run, moved, ignore=shutil.ignore_patterns("activations", REPLICAS_DIR))
    assert "earlier state" not in seeds.agreement_note(record, "degraded", open_run(moved))
    evaluation = json.loads((moved / "evaluation.json").read_text())
    evaluation["directions"]["degraded"]["metrics"]["mneme"]["f1"] = 0.123  # evaluated again since
    (moved / "evaluation.json").write_text(json.dumps(evaluation))
    assert "earlier state of this run" in seeds.agreement_note(record, "degraded", open_run(moved))
    older = {
        **record,
        "seeds": [{**row, "predicted": {"degraded": row["predicted"]["degraded"]}} for row in record["seeds"]],
    }
    assert seeds.agreement_note(older, "improved").startswith("Not measured in this direction")


def test_a_same_seed_copy_reproduces_the_run_and_a_half_made_copy_is_made_again(measured, tmp_path):
    run, _ = measured
    leftover = tmp_path / "same.partial"
    leftover.mkdir()
    (leftover / "run.json").write_text("{ half written")
    copy = replica(run, tmp_path / "same", {}, progress=False)
    assert not leftover.exists()
    mine, theirs = load_file(run / WEIGHTS), load_file(copy / WEIGHTS)
    assert all(mine[k].equal(theirs[k]) for k in mine)  # the same computation, from the shared store
    assert (
        json.loads((copy / "evaluation.json").read_text())["P"]
        == json.loads((run / "evaluation.json").read_text())["P"]
    )


def test_finished_copies_are_reused_re_read_or_refused_as_the_run_changed(measured, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(measured[0], run)
    copy = run / REPLICAS_DIR / "seed1"
    before = (copy / WEIGHTS).stat().st_mtime_ns
    assert seeds.measure(run, (1,), progress=False)["seeds"][1]["seed"] == 1
    assert (copy / WEIGHTS).stat().st_mtime_ns == before  # reused: not retrained
    assert read_manifest(copy)["name"].endswith("· seed1")  # told apart where runs are listed
    override_section(run, "evaluation", {"random_draws": 100})  # a reading setting: the copy re-reads
    seeds.measure(run, (1,), progress=False)
    assert run_config(copy).evaluation.random_draws == 100 and (copy / WEIGHTS).stat().st_mtime_ns == before
    override_section(run, "training", {"lr": 5e-4})  # a training setting: the copy is another study
    with pytest.raises(RunError, match=r"training differ.*delete it"):
        seeds.measure(run, (1,), progress=False)
    override_section(run, "training", {"lr": run_config(copy).training.lr})
    index = run / "activations" / "index.json"
    text = index.read_text()
    index.unlink()  # collected again: a new file, the copy keeps the old one
    index.write_text(text.replace("{", '{"again": 1, ', 1))
    with pytest.raises(RunError, match="activation store"):
        seeds.measure(run, (1,), progress=False)


def test_runs_that_cannot_be_retrained_are_refused_by_name(measured, tmp_path):
    run = tmp_path / "published"
    shutil.copytree(measured[0], run, ignore=shutil.ignore_patterns("activations", REPLICAS_DIR))
    with pytest.raises(seeds.SeedAgreementError, match="no activation store"):
        seeds.measure(run, progress=False)
    with pytest.raises(seeds.SeedAgreementError, match="other than the run's own"):
        seeds.measure(measured[0], (0,), progress=False)
    for damaged in ("{", '{"run_seed": 0, "seeds": [{"seed": 0, "predicted": ["plants"]}]}'):
        (run / SEED_AGREEMENT_FILE).write_text(damaged)
        with pytest.raises(seeds.SeedAgreementError, match="damaged"):
            seeds.load(run)
    with pytest.raises(seeds.SeedAgreementError, match="inside the run but not"):
        seeds.measure(measured[0], (1,), work=measured[0] / "elsewhere", progress=False)
    own = tmp_path / "own"
    shutil.copytree(measured[0], own, ignore=shutil.ignore_patterns(REPLICAS_DIR))
    override_section(own, "interpret", {"latents": "1,2"})
    with pytest.raises(seeds.SeedAgreementError, match="fixed list of latent ids"):
        seeds.measure(own, (1,), progress=False)


def test_the_command_prints_the_seeds_and_exits_2_on_a_bad_list(measured, capsys):
    run, record = measured
    assert main(["-q", "seeds", str(run), "--seeds", "1,2"]) == 0  # finished copies: nothing retrained
    out = capsys.readouterr().out
    assert "degraded:" in out and f"written: {run / SEED_AGREEMENT_FILE}" in out
    with pytest.raises(SystemExit) as exc:
        main(["seeds", str(run), "--seeds", "one"])
    assert exc.value.code == 2


def test_a_later_call_adds_its_seeds_to_those_still_measured(measured, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(measured[0], run)  # seeds 0 (its own), 1 and 2 measured, copies in RUN/seeds
    shutil.rmtree(run / REPLICAS_DIR / "seed2")  # a deleted copy leaves the record
    record = seeds.measure(run, (3,), progress=False)
    assert [row["seed"] for row in record["seeds"]] == [0, 1, 3]
    assert sorted(record["copies"]) == ["1", "3"]
