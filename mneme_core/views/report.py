"""Stakeholder report: one self-contained HTML file with the study's result and figures.

For people who will not open the dashboard: what was compared, what changed, which side
effects were predicted and measured, and which latents auditors marked. It works
offline (plotly.js is inlined once) and every string from the run is escaped.
"""

from __future__ import annotations

import html
import time
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from mneme_core.evaluation import confirmation_view, sideeffects
from mneme_core.evaluation.evaluate import direction_record
from mneme_core.run.reader import Run
from mneme_core.run.store import STAGES
from mneme_core.views import explore, plots

MAX_SCATTER_POINTS = 20_000  # the report stays a few MB even for 131k latents

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2rem auto;padding:0 1rem;color:#222}
h1{margin-bottom:0.2rem} .sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:0.6rem 0;font-size:0.9rem} td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f6f6f6} .cards{display:flex;gap:1rem;flex-wrap:wrap}
.card{border:1px solid #ddd;border-radius:8px;padding:0.6rem 1rem;min-width:120px}
.card b{display:block;font-size:1.3rem}
"""


def _table(df: pd.DataFrame) -> str:
    """An escaped HTML table (``DataFrame.to_html`` escapes cell text by default); adding
    0.0 prints a score of -log10(1) = -0.0 as 0."""
    return df.to_html(index=False, escape=True, border=0, float_format=lambda v: f"{v + 0.0:.4g}", na_rep="—")


def _cards(items: dict[str, Any]) -> str:
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card">{html.escape(str(k))}<b>{html.escape(explore.fmt(v, 4))}</b></div>'
            for k, v in items.items()
        )
        + "</div>"
    )


def _figure(fig: go.Figure, first: bool) -> str:
    fig.update_layout(template=plots.REPORT_TEMPLATE)
    return fig.to_html(full_html=False, include_plotlyjs=True if first else False, config={"displaylogo": False})


def build_report(
    run: Run,
    marks: pd.DataFrame,
    side_effects: pd.DataFrame | None = None,
    metrics: dict[str, dict[str, float]] | None = None,
) -> str:
    """The report as an HTML string.

    ``side_effects`` is the per-category table the side-effects page shows (category,
    drop, degraded, predicted, ...) and ``metrics`` maps method -> metric -> value; both
    are optional so a run without an evaluation still gets a report.
    """
    m = run.manifest
    lat = run.latents
    train = run.stage_metrics("train")
    dead, _ = explore.dead_fraction(train, run.stage_metrics("diff"))
    models = m.get("models", {})
    name = lambda spec: spec.get("path", "?") if isinstance(spec, dict) else str(spec)  # noqa: E731
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>MNEME report: {html.escape(run.name)}</title>"
        f"<style>{_CSS}</style></head><body>",
        f"<h1>MNEME report: {html.escape(run.name)}</h1>",
        f"<p class='sub'>Base <code>{html.escape(name(models.get('base', {})))}</code> vs fine-tuned "
        f"<code>{html.escape(name(models.get('ft', {})))}</code>, layer {html.escape(str(m.get('layer', '?')))}. "
        f"Generated {time.strftime('%Y-%m-%d %H:%M')}.</p>",
        _cards(
            {
                "latents": len(lat),
                **{k: train[k] for k in ("fve_base", "fve_ft") if k in train},
                **({"dead_fraction": dead} if dead is not None else {}),
                **{k: train[k] for k in ("l0",) if k in train},
                **explore.attribution_counts(lat),
                **explore.norm_label_counts(lat),
            }
        ),
        "<h2>Stages</h2>",
        _table(pd.DataFrame({"stage": STAGES, "status": [run.stage_status(s) for s in STAGES]})),
    ]
    figures: list[go.Figure] = []
    if metrics:
        parts += ["<h2>Side-effect prediction</h2>", _table(pd.DataFrame(metrics).T.reset_index(names="method"))]
        figures.append(plots.metrics_bars(metrics))
    if side_effects is not None and len(side_effects):
        parts += ["<h3>Per category</h3>", _table(side_effects)]
        figures.append(plots.benchmark_bars(side_effects))
    parts += _improved_section(run)
    parts += _confirmation_section(run, figures)
    parts.append("<h2>Audited latents</h2>")
    if marks.empty:
        parts.append("<p>No latents have been marked yet.</p>")
    else:
        cols = [c for c in ("latent", "description", "category", "attribution", "shift") if c in lat.columns]
        parts.append(_table(marks[["latent", "mark", "note"]].merge(lat[cols], on="latent", how="left")))
    if "rel_norm" in lat.columns:
        figures.append(plots.rel_norm_histogram({run.name: lat}))
    if "shift" in lat.columns:
        figures.append(plots.shift_histogram({run.name: lat}, explore.diffing_settings(run.manifest).tau))
        sample = lat.sample(MAX_SCATTER_POINTS, random_state=0) if len(lat) > MAX_SCATTER_POINTS else lat
        figures.append(plots.beta_scatter(sample))
    if "category" in lat.columns:
        figures.append(plots.category_bars(explore.category_summary(lat)))
    parts.append("<h2>Figures</h2>")
    parts += [_figure(fig, i == 0) for i, fig in enumerate(figures)]
    parts.append("</body></html>")
    return "\n".join(parts)


def _improved_section(run: Run) -> list[str]:
    """The other direction (categories that improved, predicted from amplified latents) at the
    run's threshold, when the evaluation holds it."""
    record = run.evaluation
    if not record or sideeffects.unavailable(record, "improved"):
        return []
    sub = direction_record(record, "improved")
    t = sub.get("thresholds", {})
    listed = lambda cats: html.escape(", ".join(cats)) if cats else "none"  # noqa: E731
    return [
        f"<h2>{html.escape(sideeffects.direction_label(record, 'improved'))}</h2>",
        f"<p>Truly improved T (gain &gt; {html.escape(str(t.get('degrade_threshold', '?')))}, "
        f"p &lt; {html.escape(str(t.get('significance', '?')))}): {listed(sub.get('T', []))}. "
        f"Predicted P ({html.escape(str(sub.get('latent_direction', '')))} latents, threshold "
        f"{html.escape(explore.fmt(t.get('predict_threshold'), 4))}): {listed(sub.get('P', []))}.</p>",
        _table(pd.DataFrame(sideeffects.recorded_metrics(record, "improved")).T.reset_index(names="method")),
    ]


def _confirmation_section(run: Run, figures: list[go.Figure]) -> list[str]:
    """The causal test of the predictions (``mneme confirm``), or the command that fills it."""
    head = "<h2>Causal confirmation</h2>"
    try:
        table = confirmation_view.load(run.path)
    except confirmation_view.ConfirmationFileError as exc:
        return [head, f"<p>{html.escape(str(exc))}</p>"]
    if table is None:
        return [
            head,
            f"<p>Not run. <code>{html.escape(confirmation_view.command(run))}</code> tests each predicted "
            "category by ablating its latents.</p>",
        ]
    figures.append(plots.confirmation_effects(table))
    record = run.evaluation
    stale = confirmation_view.stale_note(table, record, run)
    warning = [f"<p><strong>{html.escape(stale)}</strong></p>"] if stale else []
    return [
        head,
        *warning,
        f"<p>{html.escape(confirmation_view.RULE_TEXT)}</p>",
        _table(confirmation_view.summary(table, record)),
    ]
