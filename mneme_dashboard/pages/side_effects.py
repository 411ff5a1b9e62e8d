"""Side effects: predicted vs measured per category, metrics vs baselines, live threshold;
either direction (degraded from suppressed latents, improved from amplified ones)."""

import pandas as pd
import streamlit as st

from mneme_core.evaluation import confirmation_view as cv
from mneme_core.evaluation import evaluate as ev
from mneme_core.evaluation import sideeffects
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
directions = list(sideeffects.DIRECTIONS)
_ui.url_choice("f_direction", "direction", directions, default="degraded")
direction = st.radio(
    "Direction",
    directions,
    format_func=lambda d: sideeffects.direction_label(record, d),
    horizontal=True,
    key="f_direction",
    help="Degraded: categories whose score changed in the bad sense, predicted from the latents the study reads "
    "for damage. Improved: the good sense, predicted from the latents a fine-tune learned more of.",
)
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
threshold = c1.slider(label, 0.0, hi, step=max(top, thr0) / 200 or 0.005, format="%.4f", key=threshold_key)
c2.caption(sideeffects.threshold_caption(record, direction))
table, methods = sideeffects.live_prediction(per_cat, record, threshold, direction)
try:
    confirmation, confirmation_problem = cv.load(run.path), None
except cv.ConfirmationFileError as exc:
    confirmation, confirmation_problem = None, str(exc)
if direction == "degraded":  # mneme confirm tests the degraded direction's predictions
    table = table.assign(confirmation=cv.statuses(table["category"], confirmation, record))
if run.manifest.get("null_control"):
    st.info(
        "This run is a **null control**: the base model compared with itself. Whatever it predicts is the "
        "method's own noise; the right answer is nothing."
    )
baseline = sub.get("metrics", {}).get("activation_diff", {})

cols = st.columns(4)
mneme = methods["MNEME"]
for c, key in zip(cols, sideeffects.SHOWN_METRICS):
    value = mneme.get(key)
    rnd = methods.get("random", {}).get(key)
    c.metric(
        f"MNEME {key.replace('_', ' ')}",
        "—" if value is None else f"{value:.3f}",
        delta=None if value is None or rnd is None else f"{value - rnd:+.3f} vs random",
    )

left, right = st.columns([3, 2])
left.plotly_chart(
    plots.benchmark_bars(table, change, member, sideeffects.change_axis(record, direction)), key="bench_bars"
)
left.caption(
    f"Green: {member} and predicted · red: {member}, missed · orange: predicted, not {member} · grey: neither."
)
with right:
    st.markdown("**MNEME vs baselines**")
    st.dataframe(
        sideeffects.metrics_frame(methods),
        column_config={
            k: st.column_config.NumberColumn(k.replace("_", " "), format="%.3f") for k in sideeffects.SHOWN_METRICS
        },
    )
    if "set" in baseline:
        st.caption(
            f"Dictionary-free baseline ({baseline.get('rule', '')}) predicts: "
            f"{', '.join(baseline['set']) or 'nothing'}, from {baseline.get('n_contexts', 0):,} contexts. "
            "It has no direction: the same prediction in both, scored against each direction's own T. "
            + sideeffects.baseline_caveat(baseline)
        )
    elif baseline:
        st.caption(f"Dictionary-free baseline: {baseline.get('skipped', 'not run')}.")
    curve = sub.get("curve")
    if curve:
        st.plotly_chart(plots.threshold_curve(pd.DataFrame(curve), current=threshold), key="curve")

st.subheader("Per category")
table = sideeffects.with_baseline(table, baseline)
shown = [c for c in sideeffects.table_columns(direction) if c in table.columns]
st.dataframe(
    table[shown],
    hide_index=True,
    key="per_category",
    column_config={
        "score_before": st.column_config.NumberColumn("before", format="%.3f"),
        "score_after": st.column_config.NumberColumn("after", format="%.3f"),
        "drop": st.column_config.NumberColumn("drop", format="%.3f", help=sideeffects.change_axis(record)),
        "p_value": st.column_config.NumberColumn("p", format="%.2g"),
        "gain": st.column_config.NumberColumn("gain", format="%.3f", help="the score's change in the good sense"),
        "gain_p_value": st.column_config.NumberColumn("p", format="%.2g"),
        "score": st.column_config.NumberColumn("MNEME score", format="%.4f", help=score_help),
        "expected": st.column_config.NumberColumn(
            "expected", format="%.1f", help="attributed latents the category would hold by its share of the pool"
        ),
        "enrichment_p": st.column_config.NumberColumn("enrichment p", format="%.2g"),
        "rank_p": st.column_config.NumberColumn("rank p", format="%.2g"),
        "baseline_p": st.column_config.NumberColumn(
            "baseline p", format="%.2g", help="dictionary-free baseline: its contexts changed more than the rest"
        ),
        "baseline_ratio": st.column_config.NumberColumn(
            "baseline ratio", format="%.2f", help="dictionary-free baseline: mean change over the other contexts'"
        ),
        "support": st.column_config.NumberColumn(
            "support", help="the category's latents the rank test ranked (what the prediction's minimum counts)"
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
        column_order=["open", *keep],
        column_config={
            "open": st.column_config.LinkColumn("", display_text=":material/open_in_new:", width=40),
            "shift": st.column_config.NumberColumn(format="%.2f"),
        },
    )
else:
    st.caption(f"No latents behind {focus}.")

st.subheader("Causal confirmation")
if direction != "degraded":
    st.caption("`mneme confirm` tests the degraded direction's predictions; switch to it to read them against P.")
if confirmation_problem:
    st.warning(confirmation_problem, icon=":material/error:")
elif confirmation is None:
    st.info(
        f"Not run yet. `{cv.command(run)}` ablates each predicted category's latents at the study's layer and "
        "compares the score change with random latents of the same activation mass.",
        icon=":material/hourglass_empty:",
    )
else:
    stale = cv.stale_note(confirmation, record, run)
    if stale:
        st.warning(stale, icon=":material/update:")
    st.dataframe(cv.summary(confirmation, record), hide_index=True, key="confirmation_summary")
    st.plotly_chart(cv.figure(confirmation), key="confirmation_figure")
    st.caption(cv.RULE_TEXT)
