"""Plotly figure builders for the dashboard and the stakeholder report.

Each builder takes plain DataFrames and returns a ``go.Figure``; none touches Streamlit,
so the same figures go into the HTML report and are tested on their own. Scatter plots
carry the latent id in ``customdata[0]``: a click on a point opens that latent.
Scatter traces use WebGL (``Scattergl``) because a paper-size run has 131,072 points.
Histograms are binned here with numpy and drawn as bars, so what is drawn is exactly the
counted data (plotly's own binning drops a value on the top edge and draws nothing for a
constant series).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mneme_core.evaluation import confirmation_view
from mneme_core.views import explore

ATTRIBUTION_COLOURS = {
    "suppressed": "#d62728",
    "amplified": "#1f77b4",
    "unchanged": "#b0b0b0",
    explore.TOO_FEW_FIRES: "#e0e0e0",  # shown apart from "unchanged": nothing was compared
}
RUN_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
# No template here: resolving one by name deep-copies it (~65 ms per figure). The
# dashboard's Streamlit theme styles the figures; the report applies REPORT_TEMPLATE.
LAYOUT = dict(margin=dict(l=60, r=20, t=84, b=45), legend=dict(orientation="h", y=-0.18))
REPORT_TEMPLATE = "plotly_white"
# Plotly's modebar (the toolbar shown over the figure's top right corner) is ~30 px tall:
# titles are pinned to the figure's top edge and pushed this far down, below it, and the
# top margin (LAYOUT) leaves room for one title line under that.
TITLE_PAD = 34
# The β pair the scatter shows, per choice: the column prefix and what it is. The primary β
# is the one the shift and the attribution labels come from (mneme_core.analysis.diffing:
# error target, each latent probed along the dominant decoder row or, when the two rows
# point different ways, each model's own row); the other two are diagnostics.
BETA_TARGETS: dict[str, tuple[str, str]] = {
    "primary": ("beta", "primary β (error target, probe per latent): the one the labels use"),
    "err": ("beta_err", "error target, dominant decoder row; the labels use the primary β"),
    "recon": ("beta_recon", "reconstruction target, dominant decoder row; the labels use the primary β"),
}


def _style(fig: go.Figure, title: str, **layout: Any) -> go.Figure:
    """The shared layout, then the figure's own. Titles sit below the modebar, and every
    axis grows the margins to fit its tick labels and title, so neither is hidden or clipped."""
    fig.update_layout(title=dict(text=title, yref="container", y=1.0, yanchor="top", pad=dict(t=TITLE_PAD)), **LAYOUT)
    fig.update_layout(**layout)
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def _finite(values: pd.Series) -> np.ndarray:
    arr = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
    return arr[np.isfinite(arr)]


def _histogram(values: np.ndarray, bins: int, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Counts and edges of ``bins`` equal bins over [lo, hi] that count every value.

    numpy closes the top bin, so a value on ``hi`` (a cosine of exactly 1) is kept; values
    just past the range (float noise beyond a cosine's ±1) are clipped into the edge bins;
    a range of zero width (every shift 0) becomes one narrow bin centred on the value, a
    spike there rather than a bar that reads as a spread.
    """
    if hi <= lo:
        half = 0.005 * max(1.0, abs(lo))
        lo, hi, bins = lo - half, hi + half, 1
    counts, edges = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
    return counts, edges


def _overlay_histogram(
    runs: Mapping[str, pd.DataFrame],
    column: str,
    title: str,
    xaxis: str,
    bins: int,
    xrange: tuple[float, float] | None = None,
) -> go.Figure:
    """One histogram per run on shared bins; several runs are drawn as fractions so runs
    of different sizes compare."""
    fig = go.Figure()
    several = len(runs) > 1
    arrays = {name: _finite(df[column]) for name, df in runs.items() if column in df.columns}
    values = [a for a in arrays.values() if a.size]
    if values:
        lo, hi = xrange or (min(float(a.min()) for a in values), max(float(a.max()) for a in values))
        for i, (name, arr) in enumerate(arrays.items()):
            counts, edges = _histogram(arr, bins, lo, hi)
            fig.add_trace(
                go.Bar(
                    x=(edges[:-1] + edges[1:]) / 2,
                    y=counts / max(arr.size, 1) if several else counts,
                    width=np.diff(edges),
                    name=name,
                    opacity=0.6 if several else 0.9,
                    marker_color=RUN_COLOURS[i % len(RUN_COLOURS)],
                    customdata=np.column_stack([edges[:-1], edges[1:], counts]),
                    hovertemplate="%{customdata[0]:.3g} to %{customdata[1]:.3g}<br>%{customdata[2]} latents"
                    f"<extra>{html.escape(name)}</extra>",
                )
            )
    return _style(
        fig,
        title,
        barmode="overlay",
        bargap=0,
        xaxis_title=xaxis,
        yaxis_title="fraction of latents" if several else "latents",
    )


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


def shift_histogram(runs: Mapping[str, pd.DataFrame], tau: float) -> go.Figure:
    """log2(β_ft/β_base) with the ±τ attribution thresholds (the run's τ: ``explore.diffing_settings``)."""
    fig = _overlay_histogram(runs, "shift", "Latent-scaling shift", "log2(β_ft / β_base)", bins=60)
    for x, text in ((-tau, "suppressed ←"), (tau, "→ amplified")):
        fig.add_vline(x=x, line_dash="dash", line_color="#555", annotation_text=text)
    return fig


def _outline(counts: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A histogram as a closed step path (positions, heights): drawn as a filled line it
    sits at its true edges on any axis type, where a bar on a log axis would not."""
    position = np.concatenate([edges[:1], np.repeat(edges, 2)[1:-1], edges[-1:]])
    height = np.concatenate([[0], np.repeat(counts, 2), [0]])
    return position, height


def beta_scatter(df: pd.DataFrame, target: str = "primary") -> go.Figure:
    """β_base vs β_ft on log axes, coloured by attribution, with marginal histograms.

    ``target`` picks the β pair (``BETA_TARGETS``); the default is the primary β, the one
    the colours (the attribution labels) come from, so a point's distance from the
    diagonal is the shift its label was decided on. The marginals are binned on log10 β
    and drawn at the bins' true β edges on log axes matched to the scatter's, so they line
    up with the points. Points with β ≤ 0 or no β cannot sit on a log axis; they are
    counted in the subtitle instead of vanishing silently.
    """
    prefix, what = BETA_TARGETS[target]
    bx, by = f"{prefix}_base", f"{prefix}_ft"
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
        return _style(fig, f"β scatter: no {bx}/{by} columns (run `mneme run` through the diff stage)")
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
    if ok.any():
        lx, ly = np.log10(x[ok]), np.log10(y[ok])
        lo, hi = float(min(lx.min(), ly.min())), float(max(lx.max(), ly.max()))
        marginal = dict(mode="lines", line=dict(color="#888", width=1), showlegend=False, hoverinfo="skip")
        at, height = _outline(*_histogram(lx, 60, lo, hi))
        fig.add_trace(go.Scatter(x=10**at, y=height, fill="tozeroy", **marginal), row=1, col=1)
        at, height = _outline(*_histogram(ly, 60, lo, hi))
        fig.add_trace(go.Scatter(x=height, y=10**at, fill="tozerox", **marginal), row=2, col=2)
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
    # the β axes are log in the scatter and in the marginal that shares them
    fig.update_xaxes(type="log", col=1)
    fig.update_yaxes(type="log", row=2)
    fig.update_xaxes(title_text="β base", row=2, col=1)
    fig.update_yaxes(title_text="β fine-tuned", row=2, col=1)
    undefined = int((~np.isfinite(x) | ~np.isfinite(y)).sum())
    dropped = [
        f"{n} latents {why}"
        for n, why in ((int((~ok).sum()) - undefined, "with β ≤ 0"), (undefined, "without a β (never fired)"))
        if n
    ]
    notes = [what] + ([f"not shown: {', '.join(dropped)}"] if dropped else [])
    return _style(
        fig,
        "Latent scaling β: base vs fine-tuned",
        title_subtitle_text="<br>".join(notes),
        height=640,
        margin=dict(t=90 + 16 * len(notes)),
        legend=dict(orientation="h", y=-0.1),
    )


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
    return _style(
        fig, f"Non-zero activations of latent {latent}", xaxis_title="activation", yaxis_title="tokens", height=300
    )


def topic_bars(shares: pd.DataFrame, latent: int) -> go.Figure:
    """Share of a latent's activation per topic of the text (bars), beside the share of all
    analysis tokens in that topic (markers): a bar well past its marker is a topic the
    latent prefers, not just a large one."""
    shares = shares.sort_values("share").assign(category=lambda d: d["category"].astype(str).map(html.escape))
    lift = shares["share"] / shares["corpus_share"].where(shares["corpus_share"] > 0)
    fig = go.Figure(
        [
            go.Bar(
                x=shares["share"],
                y=shares["category"],
                orientation="h",
                name="share of its activation",
                marker_color="#ff8c00",
                customdata=np.c_[shares["corpus_share"], lift],
                hovertemplate="%{y}: %{x:.1%} of its activation<br>%{customdata[0]:.1%} of all tokens"
                "<br>%{customdata[1]:.1f}× its share of the text<extra></extra>",
            ),
            go.Scatter(
                x=shares["corpus_share"],
                y=shares["category"],
                mode="markers",
                name="share of all tokens",
                marker=dict(symbol="line-ns-open", size=14, line=dict(width=2), color="#333333"),
                hoverinfo="skip",
            ),
        ]
    )
    return _style(
        fig,
        f"Where latent {latent}'s activation goes, by topic of the text",
        xaxis_title="share",
        xaxis_tickformat=".0%",
        height=140 + 22 * len(shares),
    )


def category_map(df: pd.DataFrame, attributions: Sequence[str] | None = None) -> go.Figure:
    """UMAP of description embeddings: colour = category, size = |shift|, click → latent.

    ``attributions`` keeps the latents with those labels (``None``: all of them); an empty
    selection draws no point, so the figure never contradicts the selection.
    """
    fig = go.Figure()
    if not {"umap_x", "umap_y"} <= set(df.columns):
        return _style(fig, "No map yet: run `mneme run` through the categories stage")
    sub = df[np.isfinite(pd.to_numeric(df["umap_x"], errors="coerce"))]
    if attributions is not None and "attribution" in sub.columns:
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
    return _style(
        fig,
        "Category map (UMAP of descriptions; size = |shift|)",
        height=620,
        xaxis=dict(showticklabels=False, title=""),
        yaxis=dict(showticklabels=False, title=""),
        legend=dict(orientation="v", x=1.01, y=1),
    )


def category_bars(summary: pd.DataFrame, top: int = 25) -> go.Figure:
    """Suppressed and amplified latents per category, as horizontal bars so long category
    names stay readable, with the legend above the plot where it covers no name.

    Categories with no attributed latent are left out: they have no bar to show and would
    fill the axis.
    """
    attributed = summary[(summary["suppressed"] > 0) | (summary["amplified"] > 0)].head(top)
    fig = go.Figure(
        [
            go.Bar(
                y=attributed["category"],
                x=attributed[label],
                name=label,
                orientation="h",
                marker_color=ATTRIBUTION_COLOURS[label],
            )
            for label in ("suppressed", "amplified")
        ]
    )
    shown = bool(len(attributed))  # no empty axes under "no category holds one"
    return _style(
        fig,
        "Attributed latents per category" if shown else "No category holds an attributed latent",
        barmode="group",
        height=max(300, 140 + 30 * len(attributed)),
        xaxis=dict(title="latents", visible=shown),
        yaxis=dict(type="category", autorange="reversed", visible=shown),
        legend=dict(orientation="h", x=1, xanchor="right", y=1, yanchor="bottom"),
    )


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
    return _style(fig, f"Benchmark {change} per category", yaxis_title=axis)


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
    return _style(
        fig,
        "Side-effect prediction: MNEME vs baselines",
        barmode="group",
        yaxis=dict(range=[0, 1.05], title="score"),
    )


def threshold_curve(
    curve: pd.DataFrame,
    current: float | None = None,
    x: str = "threshold",
    keys: Sequence[str] = ("accuracy", "precision", "f1"),
) -> go.Figure:
    """Metrics as the prediction threshold moves, with the chosen threshold marked.

    A category is predicted when its score ≥ the threshold (``evaluate.predict``) and the
    curve has a point at every distinct score, so between two points a metric keeps the
    value of the higher one: drawn as steps (``vh`` over ascending thresholds), not as
    straight lines between the points. Past the outermost points the prediction does not
    change, so the steps are extended flat to ``current`` when it lies out there: the curve
    at the current threshold reads what the metric cards say.
    """
    points = curve.sort_values(x)
    if current is not None and len(points):
        if current < points[x].iloc[0]:
            points = pd.concat([points.iloc[[0]].assign(**{x: current}), points])
        if current > points[x].iloc[-1]:
            points = pd.concat([points, points.iloc[[-1]].assign(**{x: current})])
    fig = go.Figure()
    for i, key in enumerate(k for k in keys if k in points.columns):
        fig.add_trace(
            go.Scatter(
                x=points[x],
                y=points[key],
                mode="lines+markers",
                name=key,
                line=dict(color=RUN_COLOURS[i % len(RUN_COLOURS)], shape="vh"),
            )
        )
    if current is not None:
        fig.add_vline(x=current, line_dash="dash", line_color="#555", annotation_text="current")
    return _style(
        fig,
        "Metrics over the prediction threshold",
        xaxis_title=x,
        yaxis=dict(range=[0, 1.05], title="score"),
    )


def attribution_bar(counts: Mapping[str, int]) -> go.Figure:
    """Latents per attribution as ``explore.attribution_counts`` names them."""
    labels = [k for k in explore.ATTRIBUTION_ORDER if k in counts]
    fig = go.Figure(
        go.Bar(
            x=[counts[k] for k in labels],
            y=labels,
            orientation="h",
            marker_color=[ATTRIBUTION_COLOURS[k] for k in labels],
            text=[counts[k] for k in labels],
        )
    )
    return _style(fig, "Latents by attribution", height=260, xaxis_title="latents", margin=dict(l=90, b=40))


def confirmation_effects(table: pd.DataFrame) -> go.Figure:
    """Per category: the target set's ablation effect (diamond, green when confirmed) over its
    random controls (grey dots) and their mean ± z·SD (the bar the target must clear)."""
    own = table[(table["scored_category"] == table["category"]) & (table["intervention"] == "ablate")]
    target = own[own["set"] == "target"].dropna(subset=["effect"])
    controls = own[own["set"] == "control"]
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=controls["category"],
            y=controls["effect"],
            mode="markers",
            name="random controls",
            marker=dict(color="#9e9e9e", size=7),
            hovertemplate="%{x}<br>control effect %{y:.3f}<extra></extra>",
        )
    )
    bar = target["rule_z"].to_numpy(np.float64) * target["control_sd_used"].to_numpy(np.float64)
    fig.add_trace(
        go.Scatter(
            x=target["category"],
            y=target["control_mean"],
            mode="markers",
            name="control mean ± z·SD",
            marker=dict(color="#555555", symbol="line-ew-open", size=18),
            error_y=dict(type="data", array=bar, visible=True, color="#555555"),
            hovertemplate="%{x}<br>control mean %{y:.3f}<extra></extra>",
        )
    )
    colour = np.where(target["status"] == confirmation_view.CONFIRMED, "#2ca02c", "#d62728")
    fig.add_trace(
        go.Scatter(
            x=target["category"],
            y=target["effect"],
            mode="markers",
            name="the category's latents",
            marker=dict(color=colour, symbol="diamond", size=13),
            customdata=target["status"],
            hovertemplate="%{x}<br>ablation effect %{y:.3f}<br>%{customdata}<extra></extra>",
        )
    )
    return _style(
        fig,
        "Ablation effect of the category's latents vs random latents of the same mass",
        yaxis_title="score change in the side effect's direction",
    )
