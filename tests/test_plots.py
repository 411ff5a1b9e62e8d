"""Figure builders: the data plotted is the run's data, clicks can find their latent."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from test_app import page

from mneme_core.evaluation import evaluate as ev
from mneme_core.views import plots

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo"


@pytest.fixture
def lat() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 300
    return pd.DataFrame(
        {
            "latent": np.arange(n),
            "rel_norm": rng.uniform(0, 1, n),
            "dec_cos": rng.uniform(-1, 1, n),
            "beta_base": rng.uniform(0.1, 2, n),
            "beta_ft": rng.uniform(0.1, 2, n),
            "beta_err_base": rng.uniform(0.1, 2, n),
            "beta_err_ft": rng.uniform(0.1, 2, n),
            "shift": rng.normal(0, 2, n),
            "attribution": rng.choice(["suppressed", "amplified", "unchanged"], n),
            "category": rng.choice(["bio", "law", "<b>x</b>"], n),
            "umap_x": rng.normal(size=n),
            "umap_y": rng.normal(size=n),
            "description": ["fires on <img src=x onerror=alert(1)>"] * n,
        }
    )


def test_rel_norm_overlay_shares_bins_and_normalises(lat):
    other = lat.assign(rel_norm=lat["rel_norm"] ** 2)
    fig = plots.rel_norm_histogram({"a": lat, "b": other})
    bars = [t for t in fig.data if t.type == "bar"]
    assert [t.name for t in bars] == ["a", "b"]
    assert np.array_equal(bars[0].x, bars[1].x) and np.allclose(bars[0].width, 0.02)
    assert all(sum(t.y) == pytest.approx(1.0) for t in bars)  # fractions: runs of any size compare
    assert len(fig.layout.shapes) == 3  # base-only, shared, ft-only bands
    single = plots.rel_norm_histogram({"a": lat}).data[0]
    assert sum(single.y) == len(lat)
    assert np.array_equal(single.y, np.histogram(lat["rel_norm"], bins=50, range=(0, 1))[0])


SHIFT_HISTOGRAM = functools.partial(plots.shift_histogram, tau=0.5)


@pytest.mark.parametrize(
    "build, column, values, peak",
    [
        (plots.cosine_histogram, "dec_cos", [1.0] * 40 + [np.nan] * 3, 1.0),  # a null control: every cosine 1
        (SHIFT_HISTOGRAM, "shift", [0.0] * 40 + [np.nan] * 3, 0.0),  # every shift 0: a zero-width range
        (SHIFT_HISTOGRAM, "shift", [-2.0, -1.0, 0.5, 3.0, 3.0, 3.0], 3.0),  # the maximum, on the top edge
        (plots.rel_norm_histogram, "rel_norm", [0.0, 0.2, 1.0, 1.0 + 1e-7], 1.0),  # float noise past the range
    ],
)
def test_histograms_count_every_finite_value(build, column, values, peak):
    values = np.asarray(values)
    bars = build({"r": pd.DataFrame({column: values})}).data[0]
    assert sum(bars.y) == np.isfinite(values).sum()
    tallest = int(np.argmax(bars.y))
    assert abs(bars.x[tallest] - peak) <= bars.width[tallest] / 2


def test_beta_scatter_points_carry_latent_ids_and_drop_nonpositive(lat):
    lat.loc[[3, 7], "beta_ft"] = [0.0, -1.0]
    lat.loc[9, "beta_base"] = np.nan
    fig = plots.beta_scatter(lat)
    pts = [t for t in fig.data if t.type == "scattergl"]
    ids = np.concatenate([np.asarray(t.customdata)[:, 0] for t in pts])
    assert sorted(ids.tolist()) == sorted(set(range(300)) - {3, 7, 9})
    assert "not shown: 2 latents with β ≤ 0, 1 latents without a β" in fig.layout.title.subtitle.text
    assert fig.layout.xaxis3.type == "log" and fig.layout.yaxis3.type == "log"
    sup = next(t for t in pts if t.name == "suppressed")
    assert sup.marker.color == plots.ATTRIBUTION_COLOURS["suppressed"]


def test_beta_scatter_without_columns_says_what_to_run():
    fig = plots.beta_scatter(pd.DataFrame({"latent": [0]}))
    assert "diff stage" in fig.layout.title.text


def test_shift_histogram_marks_tau(lat):
    fig = plots.shift_histogram({"r": lat}, tau=1.5)
    assert sorted(s.x0 for s in fig.layout.shapes) == [-1.5, 1.5]


def test_category_map_filters_attribution_and_sizes_by_shift(lat):
    fig = plots.category_map(lat, attributions=["suppressed"])
    ids = np.concatenate([np.asarray(t.customdata)[:, 0].astype(int) for t in fig.data])
    assert set(ids) == set(lat.loc[lat.attribution == "suppressed", "latent"])
    assert {t.name for t in fig.data} <= {"bio", "law", "<b>x</b>"}
    # plotly renders hover text as HTML: categories and descriptions reach it escaped
    assert all(
        "&lt;b&gt;x&lt;/b&gt;" in t.hovertemplate and "<b>x" not in t.hovertemplate
        for t in fig.data
        if t.name == "<b>x</b>"
    )
    hover_text = [str(d) for t in fig.data for d in np.asarray(t.customdata)[:, 1]]
    assert not any("<" in text for text in hover_text)
    sizes = np.concatenate([np.asarray(t.marker.size) for t in fig.data])
    assert sizes.min() >= 3 and sizes.max() <= 12


def test_benchmark_bars_colour_by_outcome():
    table = pd.DataFrame(
        {
            "category": ["a", "b", "c", "d"],
            "drop": [0.3, 0.2, 0.01, 0.0],
            "degraded": [True, True, False, False],
            "predicted": [True, False, True, False],
        }
    )
    bar = plots.benchmark_bars(table).data[0]
    assert list(bar.x) == ["a", "b", "c", "d"]
    assert list(bar.marker.color) == ["#2ca02c", "#d62728", "#ff7f0e", "#b0b0b0"]


def test_metrics_and_threshold_curve():
    metrics = {"MNEME": {"accuracy": 0.9, "precision": 0.8, "f1": 0.85}, "random": {"accuracy": 0.5}}
    fig = plots.metrics_bars(metrics)
    acc = next(t for t in fig.data if t.name == "accuracy")
    assert list(acc.x) == ["MNEME", "random"] and list(acc.y) == [0.9, 0.5]
    curve = pd.DataFrame({"threshold": [0, 1, 2], "accuracy": [1.0, 0.5, 0.0], "f1": [0.4, 0.6, 0.0]})
    fig = plots.threshold_curve(curve, current=1)
    assert [t.name for t in fig.data] == ["accuracy", "f1"] and fig.layout.shapes[0].x0 == 1


def test_activation_histogram_uses_bin_centres():
    fig = plots.activation_histogram([0, 1, 2, 4], [5, 3, 1], latent=9)
    assert list(fig.data[0].x) == [0.5, 1.5, 3.0] and list(fig.data[0].y) == [5, 3, 1]


def _extent(positions, heights) -> tuple[float, float]:
    """Where a marginal histogram's outline has mass, along the axis it shares."""
    positions, heights = np.asarray(positions, dtype=float), np.asarray(heights, dtype=float)
    return float(positions[heights > 0].min()), float(positions[heights > 0].max())


def test_beta_scatter_marginals_sit_under_the_points():
    rng = np.random.default_rng(1)
    n = 200
    frame = pd.DataFrame(
        {
            "latent": np.arange(n),
            "beta_base": rng.uniform(0.5, 2.0, n),
            "beta_ft": 0.01 * (1 + rng.uniform(-1e-3, 1e-3, n)),
            "attribution": "suppressed",
        }
    )
    fig = plots.beta_scatter(frame)
    # the scatter is subplot (2, 1) on x3/y3; the top marginal shares x3, the right one y3
    assert fig.layout.xaxis.matches == "x3" and fig.layout.yaxis4.matches == "y3"
    assert fig.layout.xaxis.type == fig.layout.xaxis3.type == "log"
    assert fig.layout.yaxis4.type == fig.layout.yaxis3.type == "log"
    right = next(t for t in fig.data if t.xaxis == "x4" and t.yaxis == "y4")
    lo, hi = _extent(right.y, right.x)
    assert lo <= 0.01 <= hi and hi / lo < 1.2  # one narrow log bin around β_ft = 0.01
    top = next(t for t in fig.data if t.xaxis == "x" and t.yaxis == "y")
    lo, hi = _extent(top.x, top.y)
    assert lo <= frame["beta_base"].min() and frame["beta_base"].max() <= hi < 2.2
    assert sum(right.x) / 2 == sum(top.y) / 2 == n  # each bin's count is drawn twice (its two corners)


def test_beta_scatter_shows_the_beta_the_labels_come_from():
    """Colours are the diff stage's labels, decided on the primary β (with the probe chosen per
    latent): by default the scatter draws that β, so a point's distance from the diagonal is the
    shift its label was decided on."""
    lat = pd.read_parquet(DEMO / "rmu" / "latents.parquet")
    fig = plots.beta_scatter(lat)
    pts = [t for t in fig.data if t.type == "scattergl"]
    ids = np.concatenate([np.asarray(t.customdata)[:, 0] for t in pts]).astype(int)
    drawn = pd.Series(np.log2(np.concatenate([t.y for t in pts]) / np.concatenate([t.x for t in pts])), index=ids)
    present = lat.set_index("latent").loc[ids].query("beta_state == 'present'")
    assert (present["probe"] == "own").any()  # the demo has latents where the two probes differ
    assert np.allclose(drawn[present.index], present["shift"], atol=1e-6)
    assert "the labels use" in fig.layout.title.subtitle.text
    err = plots.beta_scatter(lat, target="err")
    drawn_x = np.concatenate([t.x for t in err.data if t.type == "scattergl"])
    positive = lat[(lat["beta_err_base"] > 0) & (lat["beta_err_ft"] > 0)]
    assert np.allclose(np.sort(drawn_x), np.sort(positive["beta_err_base"]))
    assert "labels use the primary β" in err.layout.title.subtitle.text


def _drawn_value(trace, t: float) -> float | None:
    """The y a line trace shows at x = t, drawn as plotly draws it (in data order, per line
    shape); a marker's own y where t is a point; None where the line does not reach t."""
    x, y = np.asarray(trace.x, dtype=float), np.asarray(trace.y, dtype=float)
    if np.isclose(x, t, rtol=0, atol=1e-12).any():
        return float(y[np.isclose(x, t, rtol=0, atol=1e-12)][0])
    shape = trace.line.shape or "linear"
    for (x0, y0), (x1, y1) in zip(zip(x[:-1], y[:-1]), zip(x[1:], y[1:])):
        if min(x0, x1) < t < max(x0, x1):
            return {"hv": y0, "vh": y1, "linear": y0 + (y1 - y0) * (t - x0) / (x1 - x0)}[shape]
    return None


def test_threshold_curve_reads_the_metrics_at_any_threshold():
    scores = pd.DataFrame({"category": list("abcdef"), "score": [5.0, 4.0, 3.0, 2.0, 1.0, 0.0], "n_latents": 3})
    T, universe = {"a", "c", "d"}, set(scores["category"])
    curve = ev.threshold_curve(scores, T, universe)
    for current in (0.0, 0.5, 1.0, 1.5, 2.7, 3.5, 4.0, 4.99, 5.0, 6.0):
        expected = ev.metrics(T, ev.predict(scores, current), universe)
        fig = plots.threshold_curve(curve, current=current)
        for trace in fig.data:
            want = expected[trace.name]
            assert _drawn_value(trace, current) == pytest.approx(np.nan if want is None else want, nan_ok=True), (
                trace.name,
                current,
            )


def test_threshold_curve_agrees_with_the_demo_metric_cards():
    record = json.loads((DEMO / "rmu" / "evaluation.json").read_text())
    current = record["thresholds"]["predict_threshold"]
    fig = plots.threshold_curve(pd.DataFrame(record["curve"]), current=current)
    for trace in fig.data:
        assert _drawn_value(trace, current) == pytest.approx(record["metrics"]["mneme"][trace.name])


def _all_figures(lat: pd.DataFrame) -> list[go.Figure]:
    summary = pd.DataFrame({"category": ["bio"], "latents": [3], "amplified": [1], "suppressed": [2]})
    table = pd.DataFrame({"category": ["a"], "drop": [0.1]})
    curve = pd.DataFrame({"threshold": [0, 1], "accuracy": [1.0, 0.5]})
    return [
        plots.rel_norm_histogram({"r": lat}),
        plots.cosine_histogram({"r": lat}),
        plots.shift_histogram({"r": lat}, tau=0.5),
        plots.beta_scatter(lat),
        plots.beta_scatter(pd.DataFrame({"latent": [0]})),
        plots.activation_histogram([0, 1], [2], latent=1),
        plots.category_map(lat),
        plots.category_bars(summary),
        plots.benchmark_bars(table),
        plots.metrics_bars({"MNEME": {"accuracy": 0.5}}),
        plots.threshold_curve(curve, current=0.5),
        plots.attribution_bar({"unchanged": 3}),
    ]


def test_titles_sit_below_the_modebar_and_axis_titles_fit(lat):
    for fig in _all_figures(lat):
        title, margin = fig.layout.title, fig.layout.margin
        # pinned to the figure's top edge, pushed below the ~30 px modebar, inside the top margin
        assert title.yref == "container" and title.y == 1 and title.yanchor == "top", title.text
        assert title.pad.t >= 30 and margin.t >= title.pad.t + 40, title.text
        axes = [fig.layout[k] for k in fig.layout if k.startswith(("xaxis", "yaxis")) and fig.layout[k] is not None]
        assert axes and all(a.automargin for a in axes), title.text  # long axis titles grow the margin


def test_category_bars_show_only_attributed_categories_readably():
    summary = pd.DataFrame(
        {
            "category": ["food and cooking", "plants", "chemical weapons", "2024", "weather"],
            "latents": [50, 130, 8, 4, 5],
            "amplified": [1, 5, 0, 2, 0],
            "suppressed": [1, 8, 0, 0, 0],
        }
    )
    fig = plots.category_bars(summary)
    assert [t.name for t in fig.data] == ["suppressed", "amplified"]
    for trace in fig.data:
        assert trace.orientation == "h"  # names along the y axis, horizontal: they never overlap
        assert list(trace.y) == ["food and cooking", "plants", "2024"]
        assert list(trace.x) == summary.set_index("category").loc[list(trace.y), trace.name].tolist()
    assert fig.layout.yaxis.type == "category"  # "2024" is a name, not a year on a number line
    assert fig.layout.legend.y >= 1 and fig.layout.legend.yanchor == "bottom"  # above the plot, off the names
    none = plots.category_bars(summary.assign(amplified=0, suppressed=0))
    assert all(len(t.y) == 0 for t in none.data) and "No category" in none.layout.title.text
    assert none.layout.xaxis.visible is False and none.layout.yaxis.visible is False


def test_category_map_draws_nothing_for_an_empty_selection(lat):
    assert all(len(t.x) == 0 for t in plots.category_map(lat, attributions=[]).data)
    assert sum(len(t.x) for t in plots.category_map(lat).data) == len(lat)


def _chart(at, key: str) -> list:
    return [e for e in at.get("plotly_chart") if e.key == key]


def _shown(at, column: str) -> list[str]:
    """A table's column as the page formats it (the styler's display text; Streamlit's grid
    draws its own placeholder for a null cell whatever the styler says)."""
    table = at.dataframe[0]
    return convert_arrow_bytes_to_pandas_df(table.proto.arrow_data.styler.display_values)[column].tolist()


def test_category_map_page_follows_the_selection():
    at = page(DEMO / "rmu", "category_map")
    assert _chart(at, "umap") and not at.info
    at.pills(key="f_map_attr").set_value([]).run()
    assert not _chart(at, "umap")  # nothing selected: no map that shows every latent anyway
    assert "Select at least one attribution" in at.info[0].value
    # a mean shift just under 0 (the run has several) is no change, shown without a sign
    summary = at.dataframe[0].value
    shown = dict(zip(summary["category"], _shown(at, "mean_shift")))
    near_zero = summary.loc[summary["mean_shift"].between(-0.005, 0, inclusive="left"), "category"]
    assert len(near_zero) and all(shown[c] == "0.00" for c in near_zero) and "-0.00" not in shown.values()
    assert shown["plants"] == f"{summary.set_index('category').loc['plants', 'mean_shift']:.2f}"


def test_category_map_page_shows_a_dash_for_a_missing_mean_shift():
    at = page(DEMO / "null-control", "category_map")
    assert _chart(at, "umap")  # nothing attributed: the map opens on the unchanged latents, not empty
    summary = at.dataframe[0].value
    assert summary["mean_shift"].isna().any()  # "(none)": no latent with a shift
    shown = _shown(at, "mean_shift")
    assert [s for s, v in zip(shown, summary["mean_shift"]) if pd.isna(v)] == ["—"] * int(
        summary["mean_shift"].isna().sum()
    )
    assert not any(s in ("None", "nan", "NaN", "") for s in shown)


def test_distributions_page_shows_the_labels_beta_and_states_the_rule():
    at = page(DEMO / "rmu", "distributions")
    assert at.segmented_control(key="f_beta_target").value == "primary"
    rule = next(c.value for c in at.caption if "standard errors" in c.value)
    assert "τ = 0.5" in rule and "z = 3" in rule and "50 analysis tokens" in rule


def test_attribution_bar_draws_latents_under_the_evidence_floor_apart():
    from mneme_core.views import explore

    lat = pd.read_parquet(DEMO / "rmu" / "latents.parquet")
    counts = explore.attribution_counts(lat)
    bar = plots.attribution_bar(counts).data[0]
    shown = dict(zip(bar.y, bar.x))
    assert shown[explore.TOO_FEW_FIRES] == int((lat["beta_state"] == "too_few_fires").sum()) > 0
    assert sum(shown.values()) == len(lat)  # every latent in exactly one bar
