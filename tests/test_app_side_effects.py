"""The Side effects page on the demo runs, under Streamlit's AppTest: what a reader sees.

rmu predicts *plants* in both directions (degraded reads suppressed and amplified latents,
improved reads amplified ones); the null control predicts nothing and attributes no latent;
rmu's improved direction has T = ∅, so several metrics are undefined there. Each test reads
the run's own record and checks the page against it. The page writes nothing into a run,
so the committed demo runs are opened where they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.proto.Metric_pb2 import Metric as MetricProto
from streamlit.testing.v1 import AppTest
from test_app import page

from mneme_core import open_run
from mneme_core.evaluation import confirmation_view as cv
from mneme_core.evaluation import sideeffects

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo"
RMU, NULL = DEMO / "rmu", DEMO / "null-control"


def _frame(at: AppTest, column: str):
    """The page's dataframe that has ``column`` (AppTest does not keep a read-only table's key)."""
    return next(d for d in at.dataframe if column in d.value.columns)


def _labels(element) -> dict[str, str]:
    """Column -> the header the reader sees (its column_config label, else its name)."""
    config = json.loads(element.proto.columns) if element.proto.columns else {}
    return {col: (config.get(col) or {}).get("label") or col for col in [*config, *element.value.columns]}


def _untested(run_dir: Path) -> list[str]:
    """Categories whose confirmation had no latents to ablate."""
    table = cv.load(run_dir)
    if table is None:
        return []
    return sorted(set(table.loc[(table["set"] == "target") & (table["status"] == "no latents"), "category"]))


def test_a_category_predicted_both_ways_is_named_with_the_reason_from_the_record():
    record = open_run(RMU).evaluation
    both = sorted(set(record["directions"]["degraded"]["P"]) & set(record["directions"]["improved"]["P"]))
    assert both == ["plants"]  # the demo's fact the page has to explain
    at = page(RMU, "side_effects")
    note = next(c.value for c in at.caption if "predicted both degraded and improved" in c.value)
    assert "**plants**" in note
    # the reason names what each direction reads, as the record says ("both" for degraded)
    assert record["directions"]["degraded"]["latent_direction"] == "both"
    assert "degraded is predicted from suppressed and amplified latents" in note
    assert "improved from amplified latents" in note
    radio = at.radio(key="f_direction")
    assert radio.options == ["Degraded ← suppressed and amplified latents", "Improved ← amplified latents"]
    assert "suppressed and amplified latents" in radio.help
    at = page(NULL, "side_effects")  # nothing predicted: nothing to explain
    assert not any("predicted both" in c.value for c in at.caption)


def test_null_control_says_whether_it_passed_and_draws_no_empty_chart():
    run = open_run(NULL)
    assert run.manifest["null_control"] is True
    at = page(NULL, "side_effects")
    assert not at.error
    verdict = at.success[0].value
    assert verdict.startswith("**Null control passed**") and "base model against itself" in verdict
    assert "P = ∅ in both directions" in verdict
    attributed = int(run.latents["attribution"].isin(["amplified", "suppressed"]).sum())
    assert f"{attributed:,} of {len(run.latents):,} latents are attributed" in verdict
    assert not at.get("plotly_chart")  # no blank frames ...
    said = [i.value for i in at.info]
    assert any("No benchmark bars" in s for s in said) and any("No threshold curve" in s for s in said)  # ... but why
    at.radio(key="f_direction").set_value("improved").run()
    assert not at.exception and not at.get("plotly_chart") and at.success


def test_undefined_metrics_and_figures_show_a_dash():
    at = page(RMU, "side_effects", direction="improved")
    methods = at.dataframe[0]
    assert methods.value["accuracy"].isna().all()  # T = ∅: accuracy is undefined for every method
    assert methods.value.loc["MNEME", "precision"] == 0.0  # defined numbers stay numbers
    assert methods.proto.placeholder == sideeffects.UNDEFINED == "—"
    # a category confirmation could not test (no latents to ablate) has six undefined figures ...
    run_dir, category = next((d, c) for d in (RMU, DEMO / "rmu-strong") for c in _untested(d))
    at = page(run_dir, "side_effects")
    summary = _frame(at, "ablation effect")
    assert summary.value.set_index("category").loc[category].isna().sum() == 6
    assert summary.proto.placeholder == "—"  # ... each shown as a dash
    assert _frame(at, "predicted").proto.placeholder == "—"
    at = page(NULL, "side_effects")
    assert at.dataframe[0].value.loc["MNEME"].isna().all() and at.dataframe[0].proto.placeholder == "—"


def test_a_delta_level_with_random_is_grey_and_has_no_arrow():
    at = page(RMU, "side_effects", direction="improved")
    precision = next(m for m in at.metric if m.label == "MNEME precision")
    assert precision.value == "0.000" and precision.proto.delta == "0.000 vs random"
    assert precision.proto.color == MetricProto.MetricColor.GRAY
    assert precision.proto.direction == MetricProto.MetricDirection.NONE
    at = page(RMU, "side_effects")
    accuracy = next(m for m in at.metric if m.label == "MNEME accuracy")
    metrics = open_run(RMU).evaluation["metrics"]
    delta = round(metrics["mneme"]["accuracy"] - metrics["random"]["accuracy"]["mean"], 3)
    assert delta != 0 and accuracy.proto.delta == f"{delta:+.3f} vs random"  # a real difference keeps ...
    up, down = MetricProto.MetricDirection.UP, MetricProto.MetricDirection.DOWN
    assert accuracy.proto.direction == (up if delta > 0 else down)  # ... its arrow


def test_baseline_notes_are_short_bullets():
    record = open_run(RMU).evaluation
    baseline = record["metrics"]["activation_diff"]
    at = page(RMU, "side_effects")
    notes = next(c.value for c in at.caption if "Dictionary-free baseline" in c.value)
    lines = notes.splitlines()
    assert len(lines) >= 5 and all(line.startswith("- ") for line in lines)
    assert max(len(line) for line in lines) <= 200
    assert f"It predicts {', '.join(baseline['set'])}, from {baseline['n_contexts']:,} contexts." in notes


def test_confirm_hint_only_where_something_was_predicted():
    null = open_run(NULL)
    assert not null.evaluation["P"] and cv.load(NULL) is None
    at = page(NULL, "side_effects")
    said = " ".join(i.value for i in at.info)
    assert cv.command(null) not in said and "Nothing to confirm" in said


@pytest.mark.parametrize("direction", ["degraded", "improved"])
def test_tables_have_readable_headers_and_fit_until_details_are_asked_for(direction):
    at = page(RMU, "side_effects", direction=direction)
    methods = _labels(at.dataframe[0])
    assert methods["_index"] == "method" and methods["balanced_accuracy"] == "bal. accuracy"
    table = _frame(at, "predicted")
    shown = list(table.proto.column_order)
    labels = _labels(table)
    assert shown and all("_" not in labels[c] for c in shown), {c: labels[c] for c in shown}
    assert labels["n_latents"] == "attributed" and "expected" not in shown and "baseline_p" not in shown
    at.toggle(key="f_details").set_value(True).run()
    table = _frame(at, "predicted")
    shown, labels = list(table.proto.column_order), _labels(table)
    assert {"expected", "enrichment_p", "mneme_categories", "baseline_p", "baseline_ratio"} <= set(shown)
    assert all("_" not in labels[c] for c in shown) and labels["mneme_categories"] == "MNEME categories"
