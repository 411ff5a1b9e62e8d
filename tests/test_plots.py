"""Figure builders: the data plotted is the run's data, clicks can find their latent."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mneme_core.views import plots


@pytest.fixture
def lat() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 300
    return pd.DataFrame(
        {
            "latent": np.arange(n),
            "rel_norm": rng.uniform(0, 1, n),
            "dec_cos": rng.uniform(-1, 1, n),
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
    hists = [t for t in fig.data if t.type == "histogram"]
    assert [t.name for t in hists] == ["a", "b"]
    assert all(t.histnorm == "probability" for t in hists)
    assert hists[0].xbins.size == hists[1].xbins.size == pytest.approx(0.02)
    assert len(fig.layout.shapes) == 3  # base-only, shared, ft-only bands
    single = plots.rel_norm_histogram({"a": lat})
    assert single.data[0].histnorm == "" and np.allclose(np.sort(single.data[0].x), np.sort(lat["rel_norm"]))


def test_beta_scatter_points_carry_latent_ids_and_drop_nonpositive(lat):
    lat.loc[[3, 7], "beta_err_ft"] = [0.0, -1.0]
    fig = plots.beta_scatter(lat)
    pts = [t for t in fig.data if t.type == "scattergl"]
    ids = np.concatenate([np.asarray(t.customdata)[:, 0] for t in pts])
    assert sorted(ids.tolist()) == sorted(set(range(300)) - {3, 7})
    assert "2 latents with β ≤ 0" in fig.layout.title.text
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
