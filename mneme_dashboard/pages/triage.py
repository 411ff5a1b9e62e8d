"""Triage: mark latents, review the marked set, export it and the stakeholder report."""

import streamlit as st

from mneme_core.evaluation import evaluate as ev
from mneme_core.evaluation import sideeffects
from mneme_core.views import explore, report
from mneme_core.views.triage import MARKS, TriageStore, export_csv
from mneme_dashboard import _ui

run = _ui.current_run()
_ui.require(run, "diff", what="Triage")
store = TriageStore(run.path)
table = run.latents


def _report_bytes(run, store) -> bytes:
    """The report with the side-effect result at the run's own threshold, when there is one."""
    side, metrics = None, None
    if run.stage_status("evaluate") == "complete" and run.evaluation:
        record = run.evaluation
        side, metrics = sideeffects.live_prediction(
            ev.per_category_table(run), record, float(record.get("thresholds", {}).get("predict_threshold", 0.0))
        )
    return report.build_report(run, store.marks(), side_effects=side, metrics=metrics).encode()


st.title("Triage")
st.caption(f"Marks are saved in `{store.path}` and shared by everyone who opens this run.")

with st.form("mark_form", border=True):
    cols = st.columns([1, 2, 3])
    top = int(table["latent"].max())
    try:
        asked = min(max(int(st.query_params.get("latent", 0) or 0), 0), top)
    except ValueError:  # a hand-edited link: start at latent 0 rather than fail
        asked = 0
    latent = cols[0].number_input("Latent", min_value=0, max_value=top, step=1, value=asked)
    mark = cols[1].selectbox("Mark", MARKS)
    note = cols[2].text_input("Note", placeholder="why")
    author = st.text_input("Your name (optional)", key="author")
    if st.form_submit_button("Save mark", icon=":material/save:"):
        store.set_mark(int(latent), mark, note, author=author)
        st.toast(f"Latent {int(latent)} marked '{mark}'")

marks = store.marks()
counts = marks["mark"].value_counts()
cols = st.columns(len(MARKS))
for c, m in zip(cols, MARKS):
    c.metric(m, int(counts.get(m, 0)))

if marks.empty:
    st.info(
        "No marks yet. Mark latents here or on their pages; they appear in the explorer's `mark` column.",
        icon=":material/fact_check:",
    )
else:
    view = marks.merge(
        table[[c for c in ("latent", "description", "category", "attribution", "shift") if c in table.columns]],
        on="latent",
        how="left",
    )
    view = explore.with_links(view, st.session_state.get("run", str(run.path)))
    st.dataframe(
        view,
        hide_index=True,
        column_order=["open", *[c for c in view.columns if c != "open"]],
        column_config={
            "open": st.column_config.LinkColumn("", display_text=":material/open_in_new:", width=40),
            "shift": st.column_config.NumberColumn(format="%.2f"),
        },
    )

stale = store.stale_marks()
if not stale.empty:
    st.warning(
        f"{len(stale)} mark(s) were made on an earlier dictionary of this run: it was retrained since, and "
        "its latent numbers now name other features, so those marks are not shown on any latent. "
        f"They are kept in `{store.path.name}`.",
        icon=":material/history:",
    )
    with st.expander("Marks from earlier dictionaries"):
        st.dataframe(stale, hide_index=True)

a, b = st.columns(2)
a.download_button(
    "Export marked set (CSV)",
    data=lambda: export_csv(table, store.marks()),
    file_name=f"{run.name}_marks.csv",
    mime="text/csv",
    on_click="ignore",
    icon=":material/download:",
    disabled=marks.empty,
    key="dl_marks",
)
b.download_button(
    "Stakeholder report (HTML)",
    data=lambda: _report_bytes(run, store),
    file_name=f"{run.name}_report.html",
    mime="text/html",
    on_click="ignore",
    icon=":material/description:",
    key="dl_report",
)
