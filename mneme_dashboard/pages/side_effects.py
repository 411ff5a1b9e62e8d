"""Side effects: predicted vs measured per category, metrics vs baselines, live threshold;
either direction (degraded, improved), each predicted from the attributed latents its
record names (``latent_direction``: the switch says which)."""

import pandas as pd
import streamlit as st

from mneme_core.evaluation import confirmation_view as cv
from mneme_core.evaluation import evaluate as ev
from mneme_core.evaluation import seeds, sideeffects
from mneme_core.views import explore, plots
from mneme_dashboard import _ui

run = _ui.current_run()
_ui.require(run, "evaluate", what="The side-effects page")
path, mtime = _ui.run_key(run)
record = run.evaluation or {}
try:
    per_cat = _ui.per_category(path, mtime)
except ev.EvaluationError as exc:
    _ui.error_page(str(exc))

st.title("Side effects")
if run.manifest.get("null_control"):
    passed, verdict = sideeffects.null_control_verdict(record, run.latents)
    if passed:
        st.success(verdict, icon=":material/check_circle:")
    else:
        st.error(verdict, icon=":material/error:")
directions = list(sideeffects.DIRECTIONS)
_ui.url_choice("f_direction", "direction", directions, default="degraded")
direction = st.radio(
    "Direction",
    directions,
    format_func=lambda d: sideeffects.direction_label(record, d),
    horizontal=True,
    key="f_direction",
    help=f"Degraded: categories whose score changed in the bad sense, predicted from "
    f"{sideeffects.latent_words(record, 'degraded')} latents. Improved: the good sense, predicted from "
    f"{sideeffects.latent_words(record, 'improved')} latents.",
)
both_note = sideeffects.both_directions_note(record)
if both_note:
    st.caption(both_note)
_ui.to_url("direction", direction)
note = sideeffects.unavailable(record, direction, run.path)
if note:
    st.info(note, icon=":material/update:")
    st.stop()
if direction != "degraded":
    try:
        per_cat = _ui.per_category(path, mtime, direction)
    except ev.EvaluationError as exc:
        st.info(str(exc), icon=":material/update:")
        st.stop()
cols_of = sideeffects.columns(direction)
change, member = cols_of["change"], cols_of["member"]
sub = ev.direction_record(record, direction)
thr0 = sideeffects.run_threshold(record, direction)
top = float(per_cat["score"].max()) if "score" in per_cat.columns and len(per_cat) else 1.0
c1, c2 = st.columns([3, 2])
hi = max(top, thr0) * 1.05 or 1.0
threshold_key = "f_threshold" if direction == "degraded" else f"f_threshold_{direction}"
_ui.fit_value(threshold_key, 0.0, hi, thr0)
label, score_help = sideeffects.score_words(record, direction)
threshold = c1.slider(label, 0.0, hi, step=sideeffects.threshold_step(thr0, hi), format="%.4f", key=threshold_key)
c2.caption(sideeffects.threshold_caption(record, direction))
table, methods = sideeffects.live_prediction(per_cat, record, threshold, direction)
try:
    confirmation, confirmation_problem = cv.load(run.path), None
except cv.ConfirmationFileError as exc:
    confirmation, confirmation_problem = None, str(exc)
if direction == "degraded":  # mneme confirm tests the degraded direction's predictions
    table = table.assign(confirmation=cv.statuses(table["category"], confirmation, record))
baseline = sub.get("metrics", {}).get("activation_diff", {})

cols = st.columns(4)
mneme = methods["MNEME"]
for c, key in zip(cols, sideeffects.SHOWN_METRICS):
    value = mneme.get(key)
    delta, level = sideeffects.delta_vs_random(value, methods.get("random", {}).get(key))
    c.metric(
        f"MNEME {key.replace('_', ' ')}",
        sideeffects.UNDEFINED if value is None else f"{value:.3f}",
        delta=delta,
        delta_color="off" if level else "normal",
        delta_arrow="off" if level else "auto",
    )

curve = sub.get("curve")
gaps = sideeffects.chart_gaps(table, direction, curve)
left, right = st.columns([3, 2])
if "bars" in gaps:
    left.info(gaps["bars"], icon=":material/bar_chart_off:")
else:
    left.plotly_chart(
        plots.benchmark_bars(table, change, member, sideeffects.change_axis(record, direction)), key="bench_bars"
    )
    left.caption(
        f"Green: {member} and predicted · red: {member}, missed · orange: predicted, not {member} · grey: neither."
    )
if "curve" in gaps:
    right.info(gaps["curve"], icon=":material/show_chart:")
elif curve:
    right.plotly_chart(plots.threshold_curve(pd.DataFrame(curve), current=threshold), key="curve")

st.markdown("**MNEME vs baselines**")
methods_col, notes_col = st.columns([3, 2])
methods_col.dataframe(
    sideeffects.metrics_frame(methods),
    placeholder=sideeffects.UNDEFINED,
    column_config={
        "_index": st.column_config.TextColumn("method", width="medium"),
        "accuracy": st.column_config.NumberColumn("accuracy", format="%.3f", width="small"),
        "precision": st.column_config.NumberColumn("precision", format="%.3f", width="small"),
        "f1": st.column_config.NumberColumn("F1", format="%.3f", width="small"),
        "balanced_accuracy": st.column_config.NumberColumn(
            "bal. accuracy", format="%.3f", width="small", help="balanced accuracy: (recall + specificity) / 2"
        ),
    },
)
notes_col.caption(sideeffects.baseline_notes(baseline))

st.subheader("Per category")
table = sideeffects.with_baseline(table, baseline)
details = st.toggle(
    "Test details",
    key="f_details",
    help="the tests' own figures: expected count, enrichment / rank p, MNEME categories, the baseline's p and ratio",
)
shown = [c for c in sideeffects.table_columns(direction) if c in table.columns]
st.dataframe(
    table[shown],
    hide_index=True,
    key="per_category",
    column_order=[c for c in sideeffects.table_columns(direction, details) if c in shown],
    placeholder=sideeffects.UNDEFINED,
    column_config={
        "category": st.column_config.TextColumn("category", pinned=True),
        "score_before": st.column_config.NumberColumn("before", format="%.3f", width="small"),
        "score_after": st.column_config.NumberColumn("after", format="%.3f", width="small"),
        "drop": st.column_config.NumberColumn(
            "drop", format="%.3f", width="small", help=sideeffects.change_axis(record)
        ),
        "p_value": st.column_config.NumberColumn("p", format="%.2g", width="small"),
        "gain": st.column_config.NumberColumn(
            "gain", format="%.3f", width="small", help="the score's change in the good sense"
        ),
        "gain_p_value": st.column_config.NumberColumn("p", format="%.2g", width="small"),
        member: st.column_config.CheckboxColumn(member, width="small", help=f"in T: truly {member}"),
        "predicted": st.column_config.CheckboxColumn("predicted", width="small", help="in P at the threshold above"),
        "score": st.column_config.NumberColumn("MNEME score", format="%.2f", help=score_help),
        "n_latents": st.column_config.NumberColumn(
            "attributed", width="small", help="attributed latents whose MNEME category maps to this category"
        ),
        "expected": st.column_config.NumberColumn(
            "expected",
            format="%.1f",
            width="small",
            help="attributed latents the category would hold by its share of the pool",
        ),
        "enrichment_p": st.column_config.NumberColumn("enrichment p", format="%.2g", width="small"),
        "rank_p": st.column_config.NumberColumn("rank p", format="%.2g", width="small"),
        "baseline_p": st.column_config.NumberColumn(
            "baseline p",
            format="%.2g",
            width="small",
            help="dictionary-free baseline: its contexts changed more than the rest",
        ),
        "baseline_ratio": st.column_config.NumberColumn(
            "baseline ratio",
            format="%.2f",
            width="small",
            help="dictionary-free baseline: mean change over the other contexts'",
        ),
        "support": st.column_config.NumberColumn(
            "support",
            width="small",
            help="the category's latents the rank test ranked (what the prediction's minimum counts)",
        ),
        "mneme_categories": st.column_config.ListColumn(
            "MNEME categories", help="MNEME's own categories mapped to this benchmark category"
        ),
        "latents": st.column_config.ListColumn("latents behind it", help="attributed latents, largest |shift| first"),
        "ranked_latents": st.column_config.ListColumn(
            "moved latents", help="the rank test's latents that moved in the reading's direction, furthest first"
        ),
        "confirmation": st.column_config.TextColumn("confirmation", help=cv.RULE_TEXT),
    },
)
focus = st.selectbox("Latents behind a category", table["category"].tolist(), key="f_focus_cat")
behind = "ranked_latents" if "ranked_latents" in table.columns else "latents"  # the rank test needs no label
ids = next(iter(table.loc[table["category"] == focus, behind]), None)
if ids is not None and len(ids):
    lat = run.latents
    sub = lat[lat["latent"].isin(list(ids))]
    keep = [c for c in ("latent", "description", "category", "attribution", "shift") if c in sub.columns]
    view = explore.with_links(sub[keep].sort_values("shift"), st.session_state.get("run", str(run.path)))
    st.dataframe(
        view,
        hide_index=True,
        placeholder=sideeffects.UNDEFINED,
        column_order=["open", *keep],
        column_config={
            "open": st.column_config.LinkColumn("", display_text=":material/open_in_new:", width=40),
            "shift": st.column_config.NumberColumn(format="%.2f"),
        },
    )
else:
    st.caption(f"No latents behind {focus}.")

st.subheader("Across dictionary seeds")
try:
    agreement = seeds.load(run.path)
except seeds.SeedAgreementError as exc:
    st.warning(str(exc), icon=":material/error:")
    agreement = None
if agreement is None:
    st.caption(seeds.not_measured_note(run.path))
else:
    st.caption(seeds.agreement_note(agreement, direction, run))
    agreed_col, quality_col = st.columns([2, 3])
    agreed_col.dataframe(
        seeds.agreement_frame(agreement, direction),
        hide_index=True,
        key="seed_agreement",
        column_config={"seeds": st.column_config.NumberColumn("seeds", help="how many seeds predict it")},
    )
    quality_col.dataframe(
        seeds.quality_frame(agreement, direction),
        hide_index=True,
        key="seed_quality",
        placeholder=sideeffects.UNDEFINED,
        column_config={
            "fve_base": st.column_config.NumberColumn("FVE base", format="%.3f"),
            "fve_ft": st.column_config.NumberColumn("FVE ft", format="%.3f"),
            "dead_fraction": st.column_config.NumberColumn(
                "dead (held-out)",
                format="%.3f",
                help="silent on the train stage's held-out tokens (the Overview counts latents silent on every "
                "analysis token, a smaller share)",
            ),
            "l0_over_k": st.column_config.NumberColumn("L0/k", format="%.2f"),
            "f1": st.column_config.NumberColumn("MNEME F1", format="%.2f", help="against this direction's T"),
        },
    )

st.subheader("Causal confirmation")
if direction != "degraded":
    st.caption("`mneme confirm` tests the degraded direction's predictions; switch to it to read them against P.")
if confirmation_problem:
    st.warning(confirmation_problem, icon=":material/error:")
elif confirmation is None:
    st.info(cv.not_run_note(run, record), icon=":material/hourglass_empty:")
else:
    stale = cv.stale_note(confirmation, record, run)
    if stale:
        st.warning(stale, icon=":material/update:")
    st.dataframe(
        cv.summary(confirmation, record),
        hide_index=True,
        key="confirmation_summary",
        placeholder=sideeffects.UNDEFINED,
    )
    st.plotly_chart(plots.confirmation_effects(confirmation), key="confirmation_figure")
    st.caption(cv.RULE_TEXT)
