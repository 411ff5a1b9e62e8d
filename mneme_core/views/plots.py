"""Plotly figure builders for the dashboard and the stakeholder report.

Each builder takes plain DataFrames and returns a ``go.Figure``; none touches Streamlit,
so the same figures go into the HTML report and are tested on their own. Scatter plots
carry the latent id in ``customdata[0]``: a click on a point opens that latent.
Scatter traces use WebGL (``Scattergl``) because a paper-size run has 131,072 points.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

ATTRIBUTION_COLOURS = {"suppressed": "#d62728", "amplified": "#1f77b4", "unchanged": "#b0b0b0"}
RUN_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
# No template here: resolving one by name deep-copies it (~65 ms per figure). The
# dashboard's Streamlit theme styles the figures; the report applies REPORT_TEMPLATE.
LAYOUT = dict(margin=dict(l=50, r=20, t=50, b=45), legend=dict(orientation="h", y=-0.18))
REPORT_TEMPLATE = "plotly_white"


def _finite(values: pd.Series) -> np.ndarray:
    arr = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
    return arr[np.isfinite(arr)]


def _overlay_histogram(
    runs: Mapping[str, pd.DataFrame],
    column: str,
    title: str,
    xaxis: str,
    bins: int,
    xrange: tuple[float, float] | None = None,
) -> go.Figure:
    """One histogram per run on shared bins; several runs are drawn as probability so
    runs of different sizes compare."""
    fig = go.Figure()
    several = len(runs) > 1
    arrays = {name: _finite(df[column]) for name, df in runs.items() if column in df.columns}
    values = [a for a in arrays.values() if a.size]
    if values:
        lo, hi = xrange or (min(float(a.min()) for a in values), max(float(a.max()) for a in values))
        size = (hi - lo) / bins if hi > lo else 1.0
        for i, (name, arr) in enumerate(arrays.items()):
            fig.add_trace(
                go.Histogram(
                    x=arr,
                    name=name,
                    xbins=dict(start=lo, end=hi + 1e-12, size=size),
                    histnorm="probability" if several else "",
                    opacity=0.6 if several else 0.9,
                    marker_color=RUN_COLOURS[i % len(RUN_COLOURS)],
                )
            )
    fig.update_layout(
        title=title,
        barmode="overlay",
        xaxis_title=xaxis,
        yaxis_title="fraction of latents" if several else "latents",
        **LAYOUT,
    )
    return fig


def rel_norm_histogram(
    runs: Mapping[str, pd.DataFrame],
    base_only_below: float = 0.1,
    ft_only_above: float = 0.9,
    shared_band: tuple[float, float] = (0.4, 0.6),
) -> go.Figure:
    """Relative decoder norm r = n_ft/(n_base+n_ft) with the label bands shaded."""
    fig = _overlay_histogram(
        runs, "rel_norm", "Relative decoder norm", "r = ‖d_ft‖ / (‖d_base‖ + ‖d_ft‖)", bins=50, xrange=(0.0, 1.0)
    )
    for x0, x1, text, colour in (
        (0, base_only_below, "base-only", "#d62728"),
        (shared_band[0], shared_band[1], "shared", "#7f7f7f"),
        (ft_only_above, 1.0, "ft-only", "#1f77b4"),
    ):
        fig.add_vrect(
            x0=x0,
            x1=x1,
            fillcolor=colour,
            opacity=0.08,
            line_width=0,
            annotation_text=text,
            annotation_position="top left",
        )
    return fig


def cosine_histogram(runs: Mapping[str, pd.DataFrame]) -> go.Figure:
    return _overlay_histogram(
        runs, "dec_cos", "Decoder cosine similarity (base vs fine-tuned row)", "cosine", bins=50, xrange=(-1.0, 1.0)
    )


def shift_histogram(runs: Mapping[str, pd.DataFrame], tau: float = 1.0) -> go.Figure:
    """log2(β_ft/β_base) with the ±τ attribution thresholds."""
    fig = _overlay_histogram(runs, "shift", "Latent-scaling shift", "log2(β_ft / β_base)", bins=60)
    for x, text in ((-tau, "suppressed ←"), (tau, "→ amplified")):
        fig.add_vline(x=x, line_dash="dash", line_color="#555", annotation_text=text)
    return fig


def beta_scatter(df: pd.DataFrame, target: str = "err") -> go.Figure:
    """β_base vs β_ft on log axes, coloured by attribution, with marginal histograms.

    Points with β ≤ 0 cannot sit on a log axis; they are counted in the title instead
    of vanishing silently.
    """
    bx, by = f"beta_{target}_base", f"beta_{target}_ft"
    fig = make_subplots(
        rows=2,
        cols=2,
        column_widths=[0.82, 0.18],
        row_heights=[0.18, 0.82],
        shared_xaxes=True,
        shared_yaxes=True,
        horizontal_spacing=0.01,
        vertical_spacing=0.01,
    )
    if bx not in df.columns or by not in df.columns:
        fig.update_layout(title=f"β scatter: no {bx}/{by} columns (run `mneme run` through the diff stage)", **LAYOUT)
        return fig
    x = pd.to_numeric(df[bx], errors="coerce").to_numpy(dtype="float64")
    y = pd.to_numeric(df[by], errors="coerce").to_numpy(dtype="float64")
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    sub = df.loc[ok]
    labels = (
        sub["attribution"].fillna("unchanged").astype(str)
        if "attribution" in sub.columns
        else pd.Series("unchanged", index=sub.index)
    )
    for label in sorted(labels.unique(), key=lambda s: (s == "unchanged", s)):
        part = sub[labels == label]
        fig.add_trace(
            go.Scattergl(
                x=part[bx],
                y=part[by],
                mode="markers",
                name=label,
                marker=dict(size=4, color=ATTRIBUTION_COLOURS.get(label, "#9467bd"), opacity=0.6),
                customdata=part[["latent"]].to_numpy(),
                hovertemplate="latent %{customdata[0]}<br>β_base %{x:.3g}<br>β_ft %{y:.3g}<extra></extra>",
            ),
            row=2,
            col=1,
        )
    lx, ly = np.log10(x[ok]), np.log10(y[ok])
    fig.add_trace(go.Histogram(x=lx, nbinsx=60, marker_color="#888", showlegend=False, hoverinfo="skip"), row=1, col=1)
    fig.add_trace(go.Histogram(y=ly, nbinsy=60, marker_color="#888", showlegend=False, hoverinfo="skip"), row=2, col=2)
    if ok.any():
        lo, hi = float(min(lx.min(), ly.min())), float(max(lx.max(), ly.max()))
        fig.add_trace(
            go.Scatter(
                x=[10**lo, 10**hi],
                y=[10**lo, 10**hi],
                mode="lines",
                name="β_ft = β_base",
                line=dict(dash="dot", color="#444"),
            ),
            row=2,
            col=1,
        )
    # marginals are binned in log10 space; the scatter axes are log
    fig.update_xaxes(type="log", title_text=f"β base ({target} target)", row=2, col=1)
    fig.update_yaxes(type="log", title_text=f"β fine-tuned ({target} target)", row=2, col=1)
    dropped = int((~ok).sum())
    title = "Latent scaling β: base vs fine-tuned" + (f" ({dropped} latents with β ≤ 0 not shown)" if dropped else "")
    fig.update_layout(title=title, height=620, **{**LAYOUT, "legend": dict(orientation="h", y=-0.1)})
    return fig


def activation_histogram(edges: Sequence[float], counts: Sequence[int], latent: int) -> go.Figure:
    edges_arr = np.asarray(edges, dtype="float64")
    centres = (edges_arr[:-1] + edges_arr[1:]) / 2
    fig = go.Figure(
        go.Bar(
            x=centres,
            y=np.asarray(counts),
            width=np.diff(edges_arr),
            marker_color="#ff8c00",
            hovertemplate="act %{x:.3g}<br>%{y} tokens<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"Non-zero activations of latent {latent}",
        xaxis_title="activation",
        yaxis_title="tokens",
        height=300,
        **LAYOUT,
    )
    return fig


def category_map(df: pd.DataFrame, attributions: Sequence[str] | None = None) -> go.Figure:
    """UMAP of description embeddings: colour = category, size = |shift|, click → latent."""
    fig = go.Figure()
    if not {"umap_x", "umap_y"} <= set(df.columns):
        fig.update_layout(title="No map yet: run `mneme run` through the categories stage", **LAYOUT)
        return fig
    sub = df[np.isfinite(pd.to_numeric(df["umap_x"], errors="coerce"))]
    if attributions and "attribution" in sub.columns:
        sub = sub[sub["attribution"].isin(list(attributions))]
    shift = (
        pd.to_numeric(sub["shift"], errors="coerce").abs().fillna(0).to_numpy()
        if "shift" in sub.columns
        else np.zeros(len(sub))
    )
    size = 3 + 9 * np.clip(shift / max(float(np.nanpercentile(shift, 99)) if shift.size else 1.0, 1e-9), 0, 1)
    cats = (
        sub["category"].fillna("(none)").astype(str)
        if "category" in sub.columns
        else pd.Series("(none)", index=sub.index)
    )
    palette = RUN_COLOURS + ("#bcbd22", "#7f7f7f", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5")
    for i, cat in enumerate(cats.value_counts().index):
        sel = (cats == cat).to_numpy()
        part = sub[sel]
        desc = (
            part["description"].fillna("").astype(str).str.slice(0, 80).map(html.escape)
            if "description" in part.columns
            else ""
        )  # plotly renders hover text as HTML
        fig.add_trace(
            go.Scattergl(
                x=part["umap_x"],
                y=part["umap_y"],
                mode="markers",
                name=cat,
                marker=dict(size=size[sel], color=palette[i % len(palette)], opacity=0.7),
                customdata=np.column_stack([part["latent"].to_numpy(), np.asarray(desc, dtype=object)]),
                hovertemplate="latent %{customdata[0]}<br>%{customdata[1]}<extra>" + html.escape(cat) + "</extra>",
            )
        )
    fig.update_layout(
        title="Category map (UMAP of descriptions; size = |shift|)",
        height=620,
        xaxis=dict(showticklabels=False, title=""),
        yaxis=dict(showticklabels=False, title=""),
        **{**LAYOUT, "legend": dict(orientation="v", x=1.01, y=1)},
    )
    return fig


def category_bars(summary: pd.DataFrame, top: int = 25) -> go.Figure:
    """Amplified and suppressed latents per category."""
    part = summary.head(top)
    fig = go.Figure(
        [
            go.Bar(
                x=part["category"],
                y=part["suppressed"],
                name="suppressed",
                marker_color=ATTRIBUTION_COLOURS["suppressed"],
            ),
            go.Bar(
                x=part["category"], y=part["amplified"], name="amplified", marker_color=ATTRIBUTION_COLOURS["amplified"]
            ),
        ]
    )
    fig.update_layout(title="Attributed latents per category", barmode="group", yaxis_title="latents", **LAYOUT)
    return fig


def benchmark_bars(
    table: pd.DataFrame, change: str = "drop", member: str = "degraded", axis: str = "score before − after"
) -> go.Figure:
    """Per category: the benchmark change, marked by whether the category is in T and predicted.

    ``table`` needs category and ``change`` (``drop`` for the degraded direction, ``gain`` for
    the improved one) and optionally ``member`` (membership of T: ``degraded`` / ``improved``)
    and ``predicted`` (bool) columns.
    """
    t = table.sort_values(change, ascending=False)
    in_T = t[member].astype(bool) if member in t.columns else pd.Series(False, index=t.index)
    predicted = t["predicted"].astype(bool) if "predicted" in t.columns else pd.Series(False, index=t.index)
    colour = np.where(in_T & predicted, "#2ca02c", np.where(in_T, "#d62728", np.where(predicted, "#ff7f0e", "#b0b0b0")))
    status = np.where(
        in_T & predicted,
        f"{member}, predicted",
        np.where(in_T, f"{member}, missed", np.where(predicted, f"predicted, not {member}", "neither")),
    )
    fig = go.Figure(
        go.Bar(
            x=t["category"],
            y=t[change],
            marker_color=colour,
            customdata=status,
            hovertemplate=f"%{{x}}<br>{change} %{{y:.3f}}<br>%{{customdata}}<extra></extra>",
        )
    )
    fig.update_layout(title=f"Benchmark {change} per category", yaxis_title=axis, **LAYOUT)
    return fig


def metrics_bars(
    metrics: Mapping[str, Mapping[str, float]], keys: Sequence[str] = ("accuracy", "precision", "f1")
) -> go.Figure:
    """MNEME vs baselines side by side; ``metrics`` maps method -> {metric: value}."""
    fig = go.Figure()
    for i, key in enumerate(keys):
        methods = [m for m in metrics if key in metrics[m]]
        fig.add_trace(
            go.Bar(
                x=methods,
                y=[metrics[m][key] for m in methods],
                name=key,
                marker_color=RUN_COLOURS[i % len(RUN_COLOURS)],
            )
        )
    fig.update_layout(
        title="Side-effect prediction: MNEME vs baselines",
        barmode="group",
        yaxis=dict(range=[0, 1.05], title="score"),
        **LAYOUT,
    )
    return fig


def threshold_curve(
    curve: pd.DataFrame,
    current: float | None = None,
    x: str = "threshold",
    keys: Sequence[str] = ("accuracy", "precision", "f1"),
) -> go.Figure:
    """Metrics as the prediction threshold moves, with the chosen threshold marked."""
    fig = go.Figure()
    for i, key in enumerate(k for k in keys if k in curve.columns):
        fig.add_trace(
            go.Scatter(
                x=curve[x],
                y=curve[key],
                mode="lines+markers",
                name=key,
                line=dict(color=RUN_COLOURS[i % len(RUN_COLOURS)]),
            )
        )
    if current is not None:
        fig.add_vline(x=current, line_dash="dash", line_color="#555", annotation_text="current")
    fig.update_layout(
        title="Metrics over the prediction threshold",
        xaxis_title=x,
        yaxis=dict(range=[0, 1.05], title="score"),
        **LAYOUT,
    )
    return fig


def attribution_bar(counts: Mapping[str, int]) -> go.Figure:
    labels = [k for k in ("suppressed", "unchanged", "amplified") if k in counts]
    fig = go.Figure(
        go.Bar(
            x=[counts[k] for k in labels],
            y=labels,
            orientation="h",
            marker_color=[ATTRIBUTION_COLOURS[k] for k in labels],
            text=[counts[k] for k in labels],
        )
    )
    fig.update_layout(
        title="Latents by attribution",
        height=220,
        xaxis_title="latents",
        **{**LAYOUT, "margin": dict(l=90, r=20, t=40, b=40)},
    )
    return fig
