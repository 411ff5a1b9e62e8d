"""`mneme confirm`: causal confirmation of predicted side effects by ablation at layer L.

The planted world (tests/_causal.py) knows the truth: latent PLANTED carries the "planted"
category's answers, the evaluation also blames a decoy latent for "steady" (wrong), and
every other latent of similar mass carries nothing. Confirmation must say exactly that.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _causal import N_QUESTIONS, PLANTED, WRONG, build_causal_run
from test_cli import _fails_cleanly  # one line on stderr, exit 2, no traceback

from mneme_core import cli, open_run
from mneme_core.evaluation import confirmation as cf
from mneme_core.evaluation import confirmation_view as cv
from mneme_core.run.store import init_run
from mneme_core.views.report import build_report


@pytest.fixture(scope="module")
def causal_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("causal")
    build_causal_run(root)
    return root


@pytest.fixture(scope="module")
def confirmed(causal_root) -> tuple[Path, pd.DataFrame]:
    run = causal_root / "run"
    return run, cf.run_confirmation(run, progress=False)


def _row(table: pd.DataFrame, category: str, kind: str, scored: str | None = None) -> pd.Series:
    keep = (
        (table["category"] == category)
        & (table["intervention"] == kind)
        & (table["set"] == "target")
        & (table["scored_category"] == (scored or category))
    )
    assert keep.sum() == 1
    return table[keep].iloc[0]


def _controls(table: pd.DataFrame, category: str, kind: str) -> pd.DataFrame:
    return table[(table["category"] == category) & (table["intervention"] == kind) & table["control"]]


# --------------------------------------------------------------------------- the planted world


def test_the_planted_world_is_what_it_claims(causal_root):
    """Preconditions, measured: only planted degraded, and the evaluation predicted planted and steady."""
    run = open_run(causal_root / "run")
    bench = run.benchmark.set_index("category")
    assert bench.loc["planted", "score_before"] == 1.0 and bench.loc["planted", "score_after"] == 0.0
    assert (bench.loc[["steady", "idle"], "score_after"] == 1.0).all()
    record = run.evaluation
    assert record["T"] == ["planted"] and record["P"] == ["planted", "steady"]
    latents = cf.category_latents(record)
    assert latents["planted"] == (PLANTED,) and latents["steady"] == (WRONG,)


def test_ablating_the_planted_latent_moves_its_category_and_matched_random_sets_do_not(confirmed):
    _, table = confirmed
    target = _row(table, "planted", "ablate")
    assert (target["score_before"], target["score_after"]) == (1.0, 0.0)
    controls = _controls(table, "planted", "ablate")
    assert len(controls) == 5 and len({tuple(c) for c in controls["latents"]}) == 5  # distinct draws
    assert not any(PLANTED in c for c in controls["latents"])
    assert (controls["score_after"] == 1.0).all()  # removing the same mass elsewhere changes nothing
    ratio = controls["mass"] / target["mass"]
    assert ratio.between(2 / 3, 1.5).all(), ratio.tolist()  # a fair control: matched in activation mass
    assert target["confirmed"] is True or bool(target["confirmed"])
    assert (
        target["status"] == cv.CONFIRMED and target["effect"] > target["control_mean"] + 2 * target["control_sd_used"]
    )


def test_the_ablation_is_specific_to_its_category(confirmed):
    _, table = confirmed
    for other in ("steady", "idle"):
        row = _row(table, "planted", "ablate", scored=other)
        assert row["score_before"] == row["score_after"] == 1.0


def test_restoring_the_planted_latent_in_the_fine_tune_brings_the_answers_back(confirmed):
    """Restore needs the *base* half of the code while the fine-tuned model runs: the
    fine-tune has no v, so a copy of its own activation would give f = 0 and restore nothing."""
    _, table = confirmed
    target = _row(table, "planted", "restore")
    assert (target["score_before"], target["score_after"]) == (0.0, 1.0)
    assert (_controls(table, "planted", "restore")["score_after"] == 0.0).all()
    assert target["status"] == cv.CONFIRMED


def test_a_wrong_prediction_is_not_confirmed(confirmed):
    _, table = confirmed
    ablate = _row(table, "steady", "ablate")
    assert ablate["score_after"] == 1.0 and ablate["status"] == cv.NOT_CONFIRMED and not bool(ablate["confirmed"])
    assert 0.5 <= ablate["control_mass_ratio"] <= 2.0  # not rescued by an "unmatched" excuse
    restore = _row(table, "steady", "restore")  # a shared latent: restoring it moves nothing
    assert restore["mass"] == 0.0 and restore["status"] == "zero mass"
    assert cv.category_status(table) == {"planted": cv.CONFIRMED, "steady": cv.NOT_CONFIRMED}


def test_the_parquet_has_a_category_a_control_and_a_confirmed_column(confirmed):
    run, table = confirmed
    stored = pd.read_parquet(run / cv.CONFIRMATION_FILE)
    assert {
        "category",
        "control",
        "confirmed",
        "intervention",
        "set",
        "score_before",
        "score_after",
        "drop",
        "control_mean",
        "control_sd",
    } <= set(stored.columns)
    assert stored["confirmed"].dtype == "boolean"
    pd.testing.assert_frame_equal(stored, table, check_dtype=False)
    assert set(stored["n_questions"][stored["n_latents"] > 0]) == {N_QUESTIONS}


def test_a_finished_confirmation_needs_no_models_and_a_killed_one_resumes(tmp_path):
    root = tmp_path / "world"
    root.mkdir()
    run = build_causal_run(root)
    first = cf.run_confirmation(run, progress=False)
    cache = sorted(p.relative_to(run) for p in (run / cf.CACHE_DIR).rglob("*.json"))
    # killed before steady's part was written: the per-question cache holds everything it scored
    next(p for p in (run / cf.PARTS_DIR).iterdir() if p.name.startswith("steady")).unlink()
    (run / cv.CONFIRMATION_FILE).unlink()
    again = cf.run_confirmation(run, progress=False)
    pd.testing.assert_frame_equal(again, first)
    assert sorted(p.relative_to(run) for p in (run / cf.CACHE_DIR).rglob("*.json")) == cache  # nothing re-scored
    for name in ("base", "ft"):
        (root / name).rename(root / f"{name}-gone")
    pd.testing.assert_frame_equal(cf.run_confirmation(run, progress=False), first)  # all parts on disk: no model loaded


def test_a_narrower_confirmation_does_not_replace_a_wider_table_unless_told(tmp_path):
    """Confirming one category of a run whose table holds more would throw the others'
    tests away (a published run has no cached parts to rebuild them): refused, and the
    table is untouched; --replace allows it."""
    root = tmp_path / "world"
    root.mkdir()
    run = build_causal_run(root)
    first = cf.run_confirmation(run, progress=False)
    categories = sorted(first["category"].unique())
    assert len(categories) > 1
    before = (run / cv.CONFIRMATION_FILE).read_bytes()
    narrow = cf.ConfirmSettings(categories=(categories[0],))
    with pytest.raises(cf.ConfirmationError, match=f"{categories[1]}.*--replace"):
        cf.run_confirmation(run, narrow, progress=False)
    assert (run / cv.CONFIRMATION_FILE).read_bytes() == before
    replaced = cf.run_confirmation(run, dataclasses.replace(narrow, replace=True), progress=False)
    assert sorted(replaced["category"].unique()) == categories[:1]


# --------------------------------------------------------------------------- the rule and the draws


@pytest.mark.parametrize(
    "effect, controls, expect",
    [
        (0.30, [0.00, 0.01, 0.00, 0.02], cv.CONFIRMED),
        (0.30, [0.28, 0.31, 0.30, 0.29], cv.NOT_CONFIRMED),  # removing anything this size hurts
        (0.04, [0.00, 0.00, 0.00], cv.NOT_CONFIRMED),  # under the minimum effect
        (0.02, [0.0, 0.0, 0.0], cv.NOT_CONFIRMED),  # identical controls: SD floored at one question (0.01)
        (0.57 - 0.52, [0.0, 0.01, 0.0], cv.CONFIRMED),  # five questions of 100 is the minimum, float rounding aside
        (0.57 - 0.52, [0.03, 0.03, 0.03], cv.NOT_CONFIRMED),  # a tie with the bar 0.03 + 2 x 0.01: not above it
        (0.55 - 0.50, [0.03, 0.03, 0.03], cv.NOT_CONFIRMED),  # ... whichever scores made the 0.05
    ],
)
def test_rule_verdict(effect, controls, expect):
    v = cf.rule_verdict(effect, controls, 100, 1.0, [1.0] * len(controls), 3, z=2.0, min_effect=0.05)
    assert v["status"] == expect and v["confirmed"] == (expect == cv.CONFIRMED)
    assert v["control_sd_used"] >= 0.01


def test_rule_says_when_it_cannot_decide():
    kw = dict(n_questions=100, z=2.0, min_effect=0.05)
    assert (
        cf.rule_verdict(0.5, [0.0], target_mass=1.0, control_masses=[1.0], n_latents=2, **kw)["status"]
        == "too few controls"
    )
    unmatched = cf.rule_verdict(0.5, [0.0, 0.0], target_mass=1.0, control_masses=[0.1, 0.2], n_latents=2, **kw)
    assert unmatched["status"] == "controls unmatched" and unmatched["confirmed"] is pd.NA
    assert (
        cf.rule_verdict(float("nan"), [], target_mass=0.0, control_masses=[], n_latents=0, **kw)["status"]
        == "no latents"
    )


def test_matched_controls_are_the_targets_size_and_mass_and_never_the_target():
    mass = np.geomspace(1, 100, 200)  # 2.3 % apart: the 8 nearest are within 10 %
    target = (10, 150)
    draws = cf.matched_controls(mass, target, 6, 8, np.random.default_rng(0))
    assert len(draws) == 6 and len(set(draws)) == 6
    for draw in draws:  # paired largest mass first
        assert len(draw) == 2 and not set(draw) & set(target)
        assert list(mass[list(draw)] / mass[[150, 10]]) == pytest.approx([1, 1], rel=0.1)
    assert draws == cf.matched_controls(mass, target, 6, 8, np.random.default_rng(0))


def _record(P, T, latents):
    universe = sorted(latents)
    return {
        "universe": universe,
        "P": P,
        "T": T,
        "category_scores": [{"category": c, "latents": list(ids)} for c, ids in latents.items()],
    }


def test_plan_tests_predictions_and_contrasts():
    latents = {"a": [1, 2], "b": [3], "c": [], "d": [4, 5, 6], "e": [7], "f": [8, 9]}
    plan = cf.plan_targets(_record(["a"], ["a", "c"], latents))
    assert [(t.category, t.role) for t in plan] == [
        ("a", "predicted"),
        ("c", "degraded, not predicted"),
        ("d", "unchanged"),
        ("f", "unchanged"),
    ]
    plan = cf.plan_targets(_record([], ["c"], latents), max_latents=1)  # nothing predicted: still informative
    assert [(t.category, t.role) for t in plan] == [
        ("c", "degraded, not predicted"),
        ("d", "most attributed"),
        ("a", "most attributed"),
        ("f", "most attributed"),
    ]  # ties by name
    assert plan[1].latents == (4,)
    with pytest.raises(cf.ConfirmationError, match="unknown category 'zz'"):
        cf.plan_targets(_record([], [], latents), categories=["zz"])


# --------------------------------------------------------------------------- the command


def test_confirm_help_exists(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["confirm", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--categories" in out and "--max-latents" in out and "--controls" in out


def test_confirm_a_run_without_evaluation(tmp_path, capsys):
    init_run(tmp_path, {"name": "bare", "models": {"layer": 1}})
    _fails_cleanly(capsys, ["confirm", str(tmp_path)], "no evaluation", "mneme evaluate")


def test_confirm_an_unknown_category(confirmed, capsys):
    run, _ = confirmed
    _fails_cleanly(capsys, ["-q", "confirm", str(run), "--categories", "planted,astrology"], "astrology", "planted")


def test_confirm_a_run_whose_models_are_gone(tmp_path, capsys):
    root = tmp_path / "world"
    root.mkdir()
    run = build_causal_run(root)
    shutil.rmtree(root / "ft")
    _fails_cleanly(capsys, ["-q", "confirm", str(run)], "models cannot be loaded", str(root / "ft"))


def test_confirm_refuses_a_model_rebuilt_in_place(tmp_path, capsys):
    """The run's cross-coder was trained on other weights than the ones now at the path."""
    from safetensors.torch import load_file, save_file

    from mneme_core.common.config import load_config
    from mneme_core.run.model_files import model_prints
    from mneme_core.run.store import update_manifest

    root = tmp_path / "world"
    root.mkdir()
    run = build_causal_run(root)
    cfg = load_config(json.loads((run / "run.json").read_text())["config"])
    update_manifest(run, lambda m: m.update(model_files=model_prints(cfg.models)))  # as run_study records them
    weights = root / "ft" / "model.safetensors"
    tensors = load_file(str(weights))
    name = sorted(k for k in tensors if k.endswith("weight"))[0]
    save_file({**tensors, name: tensors[name] * 1.01}, str(weights))
    _fails_cleanly(capsys, ["-q", "confirm", str(run)], "fine-tuned model files changed", "never saw")


def test_confirm_a_scores_only_benchmark_asks_for_questions(tiny_run, capsys):
    _fails_cleanly(capsys, ["-q", "confirm", str(tiny_run)], "--questions")


TINY_QUESTIONS = [
    ("the cat sat on the", ["mat", "sea", "fever", "board"]),
    ("the dog ran in the", ["park", "moon", "castle", "wheat"]),
    ("birds fly over the green", ["hills", "medicine", "numbers", "ball"]),
]


def test_confirm_on_the_tiny_pipeline_run(tiny_run, tmp_path, capsys):
    """The command end to end on a run the real pipeline built (its models, its cross-coder).
    The tiny run attributes no latent to a benchmark category, so the copy's evaluation is
    given a prediction: two categories, each blamed on three of the most frequent latents."""
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    record = open_run(run).evaluation
    busiest = open_run(run).latents.sort_values("freq", ascending=False)["latent"].astype(int).tolist()
    blamed = dict(zip(record["universe"][:2], (busiest[:3], busiest[3:6])))
    for row in record["category_scores"]:
        row["latents"] = blamed.get(row["category"], [])
    (run / "evaluation.json").write_text(json.dumps(record | {"P": sorted(blamed)}))
    rows = [
        {"question": q, "choices": c, "answer": 0, "subject": cat}
        for cat in record["universe"]
        for q, c in TINY_QUESTIONS
    ]
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = cli.main(["-q", "confirm", str(run), "--questions", str(questions), "--controls", "3"])
    out = capsys.readouterr().out
    assert code == 0 and cv.CONFIRMATION_FILE in out
    table = cv.load(run)
    assert set(blamed) <= set(table["category"]) and {"control", "confirmed"} <= set(table.columns)
    tested = table[table["category"].isin(blamed) & (table["scored_category"] == table["category"])]
    assert len(tested) == 2 * 2 * (1 + 3)  # two categories x (ablate, restore) x (target + 3 controls)
    assert tested["score_after"].between(0, 1).all() and (tested["mass"] > 0).any()
    assert {cv.category_status(table)[c] for c in blamed} <= {
        cv.CONFIRMED,
        cv.NOT_CONFIRMED,
        "controls unmatched",
        "zero mass",
    }


def test_a_rebuild_skips_a_run_with_nothing_to_confirm(tiny_run, tmp_path, capsys):
    """No prediction, nothing degraded, no attributed latent: `mneme confirm` says so in one
    line, and the demo build's confirm step drops an earlier build's verdicts and goes on
    (a reduced rebuild met this and stopped)."""
    from mneme_core.demo.build import confirm_run

    work = tmp_path / "work"
    run = Path(shutil.copytree(tiny_run, work / "runs" / "quiet"))
    _edit_evaluation(
        run,
        lambda r: r.update(P=[], T=[], category_scores=[dict(row, latents=[]) for row in r["category_scores"]]),
    )
    questions = work / "text" / "questions.parquet"  # where the build keeps the demo's questions
    questions.parent.mkdir(parents=True)
    pd.DataFrame([{"question": "the cat sat on the", "choices": ["mat", "sea"], "answer": 0}] * 2).to_parquet(questions)
    with pytest.raises(cf.NothingToConfirm, match="nothing to test"):
        cf.run_confirmation(run, cf.ConfirmSettings(questions=str(questions)), progress=False)
    (run / cv.CONFIRMATION_FILE).write_bytes(b"an earlier build's table")
    assert confirm_run(work, "quiet", progress=False) == run
    assert not (run / cv.CONFIRMATION_FILE).exists()
    assert "confirm:quiet: skipped, nothing to test" in capsys.readouterr().out


# --------------------------------------------------------------------------- page and report


def test_side_effects_page_shows_confirmation(confirmed, tmp_path):
    from test_app import page

    run, _ = confirmed
    at = page(run, "side_effects")
    per_cat = next(d.value for d in at.dataframe if "confirmation" in d.value.columns and "drop" in d.value.columns)
    status = dict(zip(per_cat["category"], per_cat["confirmation"]))
    assert status == {"planted": cv.CONFIRMED, "steady": cv.NOT_CONFIRMED, "idle": cv.NOT_RUN}
    assert any(c.proto.spec and "Ablation effect" in c.proto.spec for c in at.get("plotly_chart"))

    unconfirmed = Path(shutil.copytree(run, tmp_path / "unconfirmed"))
    (unconfirmed / cv.CONFIRMATION_FILE).unlink()
    at = page(unconfirmed, "side_effects")
    assert any(f"mneme confirm {unconfirmed}" in i.value for i in at.info)
    assert not at.get("plotly_chart") or all("Ablation effect" not in c.proto.spec for c in at.get("plotly_chart"))


def test_report_includes_confirmation(confirmed, tmp_path):
    run, _ = confirmed
    text = build_report(open_run(run), pd.DataFrame(columns=["latent", "mark", "note"]))
    assert "Causal confirmation" in text and cv.CONFIRMED in text and "Ablation effect" in text
    bare = Path(shutil.copytree(run, tmp_path / "bare"))
    (bare / cv.CONFIRMATION_FILE).unlink()
    text = build_report(open_run(bare), pd.DataFrame(columns=["latent", "mark", "note"]))
    assert "Causal confirmation" in text and f"mneme confirm {bare}" in text


def _edit_evaluation(run: Path, edit) -> None:
    path = run / "evaluation.json"
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


def test_a_confirmation_older_than_the_evaluation_is_marked_stale(confirmed, tmp_path):
    from test_app import page

    run, _ = confirmed
    assert cv.stale_categories(cv.load(run), open_run(run).evaluation) == []

    def new_latents(record):
        for row in record["category_scores"]:
            if row["category"] == "planted":
                row["latents"] = [j + 1 for j in row["latents"]]  # another cross-coder's, say

    moved = Path(shutil.copytree(run, tmp_path / "moved"))
    _edit_evaluation(moved, new_latents)
    assert cv.stale_categories(cv.load(moved), open_run(moved).evaluation) == ["planted"]
    at = page(moved, "side_effects")
    per_cat = next(d.value for d in at.dataframe if "confirmation" in d.value.columns and "drop" in d.value.columns)
    assert dict(zip(per_cat["category"], per_cat["confirmation"]))["planted"] == cv.STALE
    assert any("planted" in w.value and f"mneme confirm {moved}" in w.value for w in at.warning)
    text = build_report(open_run(moved), pd.DataFrame(columns=["latent", "mark", "note"]))
    assert "The evaluation changed after" in text

    unpredicted = Path(shutil.copytree(run, tmp_path / "unpredicted"))
    _edit_evaluation(unpredicted, lambda r: r.update(P=[c for c in r["P"] if c != "planted"]))
    assert "planted" in cv.stale_categories(cv.load(unpredicted), open_run(unpredicted).evaluation)


def test_info_lists_the_verdicts(confirmed, capsys):
    run, _ = confirmed
    assert cli.main(["info", str(run), "--json"]) == 0
    tables = json.loads(capsys.readouterr().out)["tables"]
    assert tables["confirmation"]["verdicts"] == {"planted": cv.CONFIRMED, "steady": cv.NOT_CONFIRMED}
    assert tables["confirmation"]["rows"] == len(cv.load(run))


def test_the_not_run_note_suggests_confirm_only_where_there_is_something_to_test(confirmed):
    run, _ = confirmed
    opened = open_run(run)
    record = opened.evaluation
    assert record["P"] and cv.command(opened) in cv.not_run_note(opened, record)
    missed = {**record, "P": [], "T": ["chemistry"]}  # nothing predicted, but a degraded category to test
    assert cv.command(opened) in cv.not_run_note(opened, missed) and "missed" in cv.not_run_note(opened, missed)
    nothing = {**record, "P": [], "T": []}  # a null control, say
    assert cv.command(opened) not in cv.not_run_note(opened, nothing)
    assert cv.not_run_note(opened, nothing).startswith("Nothing to confirm")
