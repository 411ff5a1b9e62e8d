"""Every dashboard page under Streamlit's AppTest on the tiny run built by the real pipeline.

Each test opens a page the way a shared link does (``?run=...``) and checks that what the
page shows is what the run holds: the overview's counts, the explorer's filtered count,
a latent's numbers, the side-effect metrics at any threshold, marks written through the
triage form, and the error / empty-state pages for broken or incomplete runs.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from mneme_core import open_run
from mneme_core.evaluation import evaluate as ev
from mneme_core.evaluation import sideeffects
from mneme_core.run.store import init_run, set_stage, update_manifest
from mneme_core.views import explore
from mneme_core.views.triage import TriageStore
from mneme_dashboard import ENTRY as APP

TIMEOUT = 120


@pytest.fixture(scope="module")
def run_copy(tiny_run, tmp_path_factory) -> Path:
    """A private copy: the triage tests write marks into the run folder."""
    dest = tmp_path_factory.mktemp("dash") / "tiny"
    shutil.copytree(tiny_run, dest)
    return dest


def page(run: Path | str, name: str, **params: object) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.query_params["run"] = str(run)
    at.query_params.update({k: str(v) for k, v in params.items()})
    at.switch_page(f"pages/{name}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def charts(at: AppTest) -> dict[str, dict]:
    """The page's Plotly figures by title."""
    figures = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return {f["layout"]["title"]["text"]: f for f in figures}


def values(data: object) -> list:
    """A Plotly JSON array as a list (numpy arrays travel as base64 typed arrays)."""
    if isinstance(data, dict) and "bdata" in data:
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=np.dtype(data["dtype"])).tolist()
    return list(data)  # type: ignore[call-overload]


def showing(at: AppTest) -> tuple[int, int]:
    text = next(m.value for m in at.markdown if m.value.startswith("Showing"))
    shown, total = [int(x.replace(",", "")) for x in text.replace("*", "").split() if x.replace(",", "").isdigit()]
    return shown, total


def test_overview_shows_the_run(run_copy):
    run = open_run(run_copy)
    at = page(run_copy, "overview")
    assert at.title[0].value == run.name
    assert at.query_params["run"] == str(run_copy)
    assert metric(at, "Latents") == explore.fmt(run.stage_metrics("train").get("n_latents", len(run.latents)), 4)
    # dead = fires on none of the stored tokens (the latents table's own frequencies)
    assert metric(at, "Dead fraction") == explore.fmt(float((run.latents["freq"] == 0).mean()), 4)
    record = run.evaluation
    assert metric(at, "accuracy (MNEME)") == explore.fmt(record["metrics"]["mneme"]["accuracy"], 3)
    assert metric(at, "degraded categories") == str(len(record["T"]))
    stages = at.dataframe[0].value
    assert stages.set_index("stage")["status"].to_dict() == {s: run.stage_status(s) for s in stages["stage"]}


def test_overview_says_when_a_run_was_collected_and_trained_in_bfloat16(run_copy):
    def card(at):
        return next(m.value for m in at.markdown if m.value.startswith("**Base**"))

    assert "bfloat16" not in card(page(run_copy, "overview"))  # the tiny run is float32

    def edit(m):
        m["config"]["activations"]["forward_dtype"] = "bfloat16"
        m["config"]["training"]["dtype"] = "bfloat16"

    update_manifest(run_copy, edit)
    assert card(page(run_copy, "overview")).endswith("**collected in bfloat16 · cross-coder encoder in bfloat16**")


def test_explorer_count_follows_filters(run_copy):
    lat = open_run(run_copy).latents
    at = page(run_copy, "explorer")
    assert showing(at) == (len(lat), len(lat))
    label = lat["attribution"].value_counts().index[0]
    at.multiselect(key="f_attribution").set_value([label]).run()
    expected = lat[lat["attribution"] == label]
    assert showing(at) == (len(expected), len(lat))
    shown = at.dataframe[0].value
    assert set(shown["latent"]) == set(expected["latent"])
    shifts = shown["shift"]
    assert shifts.dropna().is_monotonic_increasing  # default sort: shift ascending,
    assert (
        shifts.isna().cumsum().iloc[-1] == shifts.isna().sum() == shifts.iloc[shifts.notna().sum() :].isna().sum()
    )  # undefined last
    word = str(lat["description"].dropna().iloc[0]).split()[0]
    at.text_input(key="f_text").set_value(word).run()
    both = expected[expected["description"].fillna("").str.contains(word, case=False, regex=False)]
    assert showing(at)[0] == len(both)
    lo, hi = at.slider(key="f_rel_norm").value
    at.text_input(key="f_text").set_value("").run()
    at.slider(key="f_rel_norm").set_value((lo, (lo + hi) / 2)).run()
    rel = expected["rel_norm"]
    assert showing(at)[0] == int(((rel >= lo) & (rel <= (lo + hi) / 2)).sum())
    assert list(at.session_state["explorer_order"]) == at.dataframe[0].value["latent"].tolist()


def test_latent_page_shows_its_numbers_and_contexts(run_copy):
    run = open_run(run_copy)
    ctx_all = run.contexts()
    latent = int(ctx_all["latent"].iloc[0])
    row = explore.latent_row(run.latents, latent)
    at = page(run_copy, "latent", latent=latent)
    assert at.title[0].value == f"Latent {latent}"
    for label, col in (
        ("‖d base‖", "dec_norm_base"),
        ("‖d ft‖", "dec_norm_ft"),
        ("relative norm", "rel_norm"),
        ("cosine", "dec_cos"),
        ("shift log2(β_ft/β_base)", "shift"),
    ):
        assert metric(at, label) == explore.fmt(row[col], 4), label
    beta = at.table[0].value
    assert beta.iloc[0, 0] == explore.fmt(row["beta_err_base"], 4) and beta.iloc[0, 1] == explore.fmt(
        row["beta_err_ft"], 4
    )
    html_out = "".join(h.value for h in at.html)
    ctx = run.contexts(latent)
    assert html_out.count('class="ctx"') == len(explore.distinct_samples(ctx))
    assert "<script" not in html_out.lower()
    assert at.query_params["latent"] == str(latent)
    shares = run.topics(latent)  # the tiny run kept its store: the categories stage measured it
    assert len(shares)
    bars = charts(at)[f"Where latent {latent}'s activation goes, by topic of the text"]["data"][0]
    assert values(bars["y"]) == shares["category"].tolist()[::-1]  # largest share on top
    assert values(bars["x"]) == pytest.approx(shares["share"].tolist()[::-1])


def test_latent_outside_the_explorers_filter_walks_by_id(run_copy):
    """Opened from a link while the explorer's filter leaves it out, a latent still gets
    previous / next (by id), and the caption says why they do not follow the filter."""
    ids = open_run(run_copy).latents["latent"].to_numpy()
    latent, elsewhere = int(ids[1]), ids[3:6]
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.query_params.update({"run": str(run_copy), "latent": str(latent)})
    at.session_state["explorer_order"] = elsewhere
    at.switch_page("pages/latent.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    labels = [link.proto.label for link in at.get("page_link")]
    assert f"← {int(ids[0])}" in labels and f"{int(ids[2])} →" in labels
    assert any("not in the explorer's current filter" in c.value for c in at.caption)
    at.session_state["explorer_order"] = ids[::-1]  # inside the filter: its order, reversed
    at.run()
    labels = [link.proto.label for link in at.get("page_link")]
    assert f"← {int(ids[2])}" in labels and f"{int(ids[0])} →" in labels


def test_latent_page_hides_a_stale_contexts_stages_histogram(tiny_run, tmp_path):
    """Once an earlier stage re-ran, the histograms on disk are the previous dictionary's:
    the page says the stage is not complete instead of drawing one under this number."""
    stale = Path(shutil.copytree(tiny_run, tmp_path / "stale"))
    latent = int(open_run(stale).contexts()["latent"].iloc[0])
    histogram = f"Non-zero activations of latent {latent}"
    assert histogram in charts(page(stale, "latent", latent=latent))
    set_stage(stale, "contexts", "stale")
    at = page(stale, "latent", latent=latent)
    assert histogram not in charts(at)
    assert any("it is not complete" in c.value for c in at.caption)


def test_latent_page_unknown_latent_says_so(run_copy):
    at = page(run_copy, "latent", latent=10**6)
    assert at.title[0].value == "Latent not found" and "no latent" in at.error[0].value


def test_distributions_and_category_map(run_copy):
    lat = open_run(run_copy).latents
    at = page(run_copy, "distributions")
    assert at.title[0].value == "Diff distributions"
    at = page(run_copy, "category_map")
    summary = at.dataframe[0].value
    pd.testing.assert_frame_equal(summary.reset_index(drop=True), explore.category_summary(lat), check_dtype=False)


def test_side_effects_metrics_follow_the_threshold(run_copy):
    run = open_run(run_copy)
    record = run.evaluation
    at = page(run_copy, "side_effects")
    acc = record["metrics"]["mneme"]["accuracy"]
    assert metric(at, "MNEME accuracy") == ("—" if acc is None else f"{acc:.3f}")
    per_cat = ev.per_category_table(run)
    slider = at.slider(key="f_threshold")
    high = slider.max
    slider.set_value(high).run()
    predicted = ev.predict(per_cat, high)
    expected = ev.metrics(set(record["T"]), predicted, record["universe"])
    assert metric(at, "MNEME accuracy") == ("—" if expected["accuracy"] is None else f"{expected['accuracy']:.3f}")
    table = at.dataframe[1].value
    assert set(table.loc[table["predicted"], "category"]) == predicted
    assert set(table.loc[table["degraded"], "category"]) == set(record["T"])


def test_side_effects_shows_which_predictions_recur_across_seeds(run_copy, tmp_path):
    from mneme_core.common.atomic import atomic_write_json
    from mneme_core.run.store import SEED_AGREEMENT_FILE

    at = page(run_copy, "side_effects")
    assert any("mneme seeds" in c.value for c in at.caption)  # not measured: says how
    run = tmp_path / "seeded"
    shutil.copytree(run_copy, run)
    record = open_run(run).evaluation
    predicted = sorted(ev.direction_record(record, "degraded")["P"])
    other = next(c for c in record["universe"] if c not in predicted)
    quality = {"fve_base": 0.812, "fve_ft": 0.809, "dead_fraction": 0.05, "l0_over_k": 1.0, "suppressed": 1}
    rows = [
        {"seed": 0, **quality, "amplified": 3, "predicted": {"degraded": predicted}},
        {"seed": 7, **quality, "amplified": 4, "predicted": {"degraded": [other]}, "scores": {"degraded": {"f1": 0.4}}},
    ]
    atomic_write_json(run / SEED_AGREEMENT_FILE, {"run_seed": 0, "seeds": rows})
    at = page(run, "side_effects")
    shown = next(d.value for d in at.dataframe if "seed 7" in d.value.columns)
    assert dict(zip(shown["category"], shown["seed 7"])) == {c: c == other for c in [*predicted, other]}
    assert set(shown["seeds"]) == {1}
    per_seed = next(d.value for d in at.dataframe if "fve_base" in d.value.columns)
    assert per_seed["amplified"].tolist() == [3, 4] and per_seed["f1"].tolist()[1] == 0.4
    assert any(f"{other} (1 of 2)" in c.value for c in at.caption)
    assert any("earlier state of this run" in c.value for c in at.caption)  # seed 0's row is not the run's


@pytest.fixture(scope="module")
def twodir_run(tmp_path_factory) -> Path:
    """A run whose benchmark moved both ways (tests/_twodir.py holds its truth)."""
    import _twodir

    return _twodir.build_run(tmp_path_factory.mktemp("twodir") / "run")


def _shown_sets(at: AppTest, member: str) -> tuple[set[str], set[str]]:
    table = at.dataframe[1].value
    return set(table.loc[table[member], "category"]), set(table.loc[table["predicted"], "category"])


def test_side_effects_direction_switch_changes_T_P_and_metrics(twodir_run):
    import _twodir as td

    record = open_run(twodir_run).evaluation
    at = page(twodir_run, "side_effects")
    assert at.radio(key="f_direction").value == "degraded"
    assert at.radio(key="f_direction").options == ["Degraded ← suppressed latents", "Improved ← amplified latents"]
    assert _shown_sets(at, "degraded") == (set(td.T_DEGRADED), set(td.P_SUPPRESSED))
    assert metric(at, "MNEME accuracy") == "1.000" and metric(at, "MNEME precision") == "1.000"
    assert "improved" not in at.dataframe[1].value.columns
    assert "enrichment in attributed latents" in at.slider(key="f_threshold").label  # the run's predict_score
    baseline = record["metrics"]["activation_diff"]
    assert any(sideeffects.baseline_caveat(baseline) in c.value for c in at.caption)  # its blind spot, beside it
    assert "mean change >= 1.41" in baseline["rule"]  # the default effect floor, named where it is shown
    assert sideeffects.baseline_caveat({}) != sideeffects.baseline_caveat(baseline)  # a record from before it
    shown = at.dataframe[1].value.set_index("category")
    for row in baseline["per_category"]:  # the baseline's own figures beside MNEME's, per category
        assert shown.loc[row["category"], "baseline_p"] == pytest.approx(row["p_value"])
        ratio = float("nan") if row["ratio"] is None else row["ratio"]  # JSON's null: no ratio
        assert shown.loc[row["category"], "baseline_ratio"] == pytest.approx(ratio, nan_ok=True)
    at.radio(key="f_direction").set_value("improved").run()
    assert not at.exception, [e.value for e in at.exception]
    assert _shown_sets(at, "improved") == (set(td.T_IMPROVED), set(td.P_AMPLIFIED))
    assert "gain" in at.dataframe[1].value.columns and "degraded" not in at.dataframe[1].value.columns
    assert metric(at, "MNEME accuracy") == "0.500" and metric(at, "MNEME precision") == "0.500"
    methods = at.dataframe[0].value
    assert methods.loc["activation diff (no dictionary)", "precision"] == 1.0  # the same prediction, this T
    assert methods.loc["oracle", "accuracy"] == 1.0
    thr = record["directions"]["improved"]["thresholds"]["predict_threshold"]
    assert at.session_state["f_threshold_improved"] == pytest.approx(thr)  # the direction's own default
    assert any("Improved: gain" in c.value for c in at.caption)
    assert at.query_params["direction"] == "improved"  # a shared link opens the same direction
    at.radio(key="f_direction").set_value("degraded").run()
    assert _shown_sets(at, "degraded") == (set(td.T_DEGRADED), set(td.P_SUPPRESSED))
    assert at.query_params["direction"] == "degraded"


def test_overview_shows_both_directions(twodir_run):
    import _twodir as td

    at = page(twodir_run, "overview")
    assert metric(at, "degraded categories") == str(len(td.T_DEGRADED))
    assert metric(at, "improved categories") == str(len(td.T_IMPROVED))
    accuracies = [m.value for m in at.metric if m.label == "accuracy (MNEME)"]
    assert accuracies == ["1", "0.5"]  # degraded, then improved (the two records' own metrics)


def test_side_effects_direction_comes_from_the_link(twodir_run):
    import _twodir as td

    at = page(twodir_run, "side_effects", direction="improved")
    assert at.radio(key="f_direction").value == "improved"
    assert _shown_sets(at, "improved") == (set(td.T_IMPROVED), set(td.P_AMPLIFIED))
    at = page(twodir_run, "side_effects", direction="sideways")  # a hand-edited link: the default
    assert at.radio(key="f_direction").value == "degraded"


def test_run_evaluated_before_two_directions_says_to_rerun(twodir_run, tmp_path):
    import _twodir as td

    old = tmp_path / "old"
    shutil.copytree(twodir_run, old)
    record = json.loads((old / "evaluation.json").read_text())
    (old / "evaluation.json").write_text(json.dumps({k: v for k, v in record.items() if k != "directions"}))
    at = page(old, "side_effects")
    assert _shown_sets(at, "degraded") == (set(td.T_DEGRADED), set(td.P_SUPPRESSED))
    at.radio(key="f_direction").set_value("improved").run()
    assert not at.exception, [e.value for e in at.exception]
    assert "mneme evaluate" in at.info[0].value and "improved" in at.info[0].value
    assert not at.dataframe  # nothing half-drawn from the degraded direction
    at = page(old, "side_effects", direction="improved")
    assert "mneme evaluate" in at.info[0].value


def test_triage_form_persists_and_explorer_filters_marks(run_copy):
    latent = int(open_run(run_copy).latents["latent"].iloc[1])
    at = page(run_copy, "triage")
    at.number_input[0].set_value(latent)
    at.selectbox[0].set_value("confirmed side effect")
    at.text_input[0].set_value("<b>chemistry</b> drop")
    at.button[0].click().run()
    assert not at.exception
    mark = TriageStore(run_copy).get_mark(latent)
    assert mark["mark"] == "confirmed side effect" and mark["note"] == "<b>chemistry</b> drop"
    marks = TriageStore(run_copy).marks()
    assert metric(at, "confirmed side effect") == str(int((marks["mark"] == "confirmed side effect").sum()))
    assert latent in at.dataframe[0].value["latent"].tolist()
    at = page(run_copy, "explorer")
    at.multiselect(key="f_mark").set_value(["confirmed side effect"]).run()
    confirmed = marks.loc[marks["mark"] == "confirmed side effect", "latent"]
    assert showing(at)[0] == len(confirmed) and set(at.dataframe[0].value["latent"]) == set(confirmed)


def test_triage_keeps_marks_of_an_earlier_dictionary_off_the_latents(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    latent = int(open_run(run).latents["latent"].iloc[0])
    TriageStore(run, dictionary="0123456789abcdef").set_mark(latent, "false alarm", "before the retrain")
    at = page(run, "triage")
    assert metric(at, "false alarm") == "0"
    assert any("1 mark(s) were made on an earlier dictionary" in w.value for w in at.warning)
    assert at.dataframe[0].value["note"].tolist() == ["before the retrain"]
    at = page(run, "explorer")
    assert set(at.dataframe[0].value["mark"]) == {""}


def test_prompt_lab_runs_the_models(run_copy):
    at = page(run_copy, "prompt_lab")
    if at.warning:  # the models could not be loaded: the page must say so, not fail
        assert "cannot be loaded" in at.warning[0].value
        pytest.fail(f"tiny run models should load: {at.warning[0].value}")
    at.text_area(key="lab_text").set_value("the cat sat on the mat").run()
    assert not at.exception
    firing = at.dataframe[0].value
    assert firing["token"].tolist()[-6:] == [" the", " cat", " sat", " on", " the", " mat"]
    assert (firing["ft write"] >= 0).all()


def test_incompatible_run_gets_an_error_page(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"schema_version": 99}))
    at = page(tmp_path, "overview")
    assert at.title[0].value == "This run cannot be opened"
    assert "schema version" in at.error[0].value


def test_missing_stage_says_which_command_fills_it(tmp_path):
    init_run(tmp_path, {"name": "empty", "models": {"layer": 1}})
    set_stage(tmp_path, "collect", "complete")
    at = page(tmp_path, "explorer")
    text = at.info[0].value
    assert "diff" in text and "mneme diff" in text and "collect" in text
    at = page(tmp_path, "side_effects")
    assert "mneme evaluate" in at.info[0].value


def test_run_from_env_var_goes_into_the_url(run_copy, monkeypatch):
    monkeypatch.setenv("MNEME_RUNS", str(run_copy.parent))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.title[0].value == open_run(run_copy).name
    assert Path(at.query_params["run"]).resolve() == run_copy.resolve()


def test_a_link_naming_the_run_folder_opens_it(run_copy, monkeypatch):
    """A link made where the run sat at another path (``?run=/elsewhere/tiny``, or just its
    folder name) opens the one listed run of that name; a name nobody lists still fails."""
    monkeypatch.setenv("MNEME_RUNS", str(run_copy.parent))
    name = open_run(run_copy).name
    for link in (run_copy.name, f"/no/such/machine/{run_copy.name}"):
        at = page(link, "overview")
        assert at.title[0].value == name, link
        assert Path(at.query_params["run"]).resolve() == run_copy.resolve()  # this server's own label
    at = page("no-such-run", "overview")
    assert at.title[0].value == "This run cannot be opened"


def test_a_link_by_a_name_two_listed_runs_share_says_so(run_copy, tmp_path, monkeypatch):
    twin = tmp_path / "elsewhere" / run_copy.name
    shutil.copytree(run_copy, twin)
    monkeypatch.setenv("MNEME_RUNS", os.pathsep.join([str(run_copy.parent), str(twin.parent)]))
    at = page(run_copy.name, "overview")
    assert at.title[0].value == "This run cannot be opened"
    assert "names 2 listed runs" in at.error[0].value and "pick one in the sidebar" in at.error[0].value


def test_remembered_filters_outside_the_runs_bounds_are_reset(run_copy):
    """Filters outlive a page (and a re-run stage can move a column's bounds): stale values
    must be pulled back into range instead of crashing the widgets."""
    table = open_run(run_copy).latents
    for name, stale in [
        ("explorer", {"f_rel_norm": (5.0, 6.0), "f_attribution": ["no-such-label"], "f_sort": "gone"}),
        ("side_effects", {"f_threshold": 99.0}),
    ]:
        at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
        at.query_params["run"] = str(run_copy)
        for key, value in stale.items():
            at.session_state[key] = value
        at.switch_page(f"pages/{name}.py")
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        if name == "explorer":
            assert showing(at) == (len(table), len(table))  # every stale filter dropped
        else:
            assert 0.0 <= at.session_state["f_threshold"] < 99.0


def test_a_damaged_topic_table_is_named_and_the_latent_page_still_draws(tiny_run, tmp_path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    (run / "latent_topics.parquet").write_bytes(b"not parquet")
    latent = int(open_run(run).contexts()["latent"].iloc[0])
    at = page(run, "latent", latent=latent)
    assert any("cannot be read" in c.value and "force categories" in c.value for c in at.caption)
    assert f"Non-zero activations of latent {latent}" in charts(at)
