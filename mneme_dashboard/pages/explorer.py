"""Latent explorer: filter, search and sort the latents table; each row opens its page."""

from typing import cast

import streamlit as st

from mneme_core.views import explore
from mneme_core.views.triage import MARKS, TriageStore, with_marks
from mneme_dashboard import _ui

PAGE_ROWS = 500  # rows sent to the browser at once; the CSV holds every filtered row

run = _ui.current_run()
_ui.require(run, "diff", what="The latent explorer")
path, mtime = _ui.run_key(run)
table = with_marks(run.latents, TriageStore(run.path).marks())
options, bounds = _ui.filter_choices(path, mtime)
options["mark"] = ["", *MARKS]


def default(key: str, value: object) -> None:
    """Seed a widget's value once; later runs keep what the user chose."""
    st.session_state.setdefault(key, value)


st.title("Latent explorer")
with st.container(border=True):
    text = st.text_input("Search descriptions", key="f_text", placeholder="e.g. virus, chemistry, deception")
    label_cols = st.columns(len(options) or 1)
    labels = {}
    for col, (name, values) in zip(label_cols, options.items()):
        _ui.fit_choices(f"f_{name}", list(values))
        labels[name] = col.multiselect(
            name.replace("_", " "), values, key=f"f_{name}", placeholder="any", format_func=lambda v: v or "(none)"
        )
    ranges = {}
    with st.expander("Numeric ranges", expanded=False):
        range_cols = st.columns(4)
        for i, (name, (lo, hi)) in enumerate(bounds.items()):
            if hi > lo:
                _ui.fit_range(f"f_{name}", lo, hi)
                # a range slider: fit_range seeded its state with a (low, high) pair
                chosen = cast(
                    tuple[float, float],
                    range_cols[i % 4].slider(
                        name.replace("_", " "), lo, hi, step=(hi - lo) / 1000, key=f"f_{name}", format="%.3g"
                    ),
                )
                if tuple(chosen) != (lo, hi):  # a slider at full range keeps latents missing that value
                    ranges[name] = chosen
    sort_cols = st.columns([2, 1, 3])
    sortable = [c for c in table.columns if c not in ("description", "note")]
    _ui.fit_choices("f_sort", sortable, seed="shift" if "shift" in sortable else "latent", multi=False)
    sort_by = sort_cols[0].selectbox("Sort by", sortable, key="f_sort")
    default("f_asc", True)
    ascending = sort_cols[1].toggle("Ascending", key="f_asc")

spec = explore.FilterSpec(labels=labels, ranges=ranges, text=text, sort_by=sort_by, ascending=ascending)
order = explore.filtered_order(table, spec)
st.session_state["explorer_order"] = table["latent"].to_numpy()[order]

n_pages = max(1, -(-len(order) // PAGE_ROWS))
if st.session_state.get("f_page", 1) > n_pages:  # the filter shrank the list under the page
    st.session_state["f_page"] = 1
default("f_page", 1)
head = st.columns([4, 1, 1], vertical_alignment="bottom")
head[0].markdown(f"Showing **{len(order):,}** of **{len(table):,}** latents")
# a visible label: a collapsed one leaves the input with no name for screen readers
page = head[1].number_input(f"Page (of {n_pages})", min_value=1, max_value=n_pages, key="f_page") if n_pages > 1 else 1
head[2].download_button(
    "Download CSV",
    data=lambda: table.iloc[order].to_csv(index=False).encode(),
    file_name=f"{run.name}_latents.csv",
    mime="text/csv",
    on_click="ignore",
    icon=":material/download:",
    key="dl_csv",
)

visible = [c for c in explore.DEFAULT_COLUMNS if c in table.columns]
rows_shown = order[(page - 1) * PAGE_ROWS : page * PAGE_ROWS]
view = explore.with_links(table[visible].iloc[rows_shown], st.session_state.get("run", str(run.path)))
gen = st.session_state.setdefault("table_gen", 0)  # a fresh key drops an old selection on return
event = st.dataframe(
    view,
    hide_index=True,
    height=560,
    key=f"latents_table_{gen}",
    on_select="rerun",
    selection_mode="single-row",
    column_order=["open", *visible],
    column_config={
        "open": st.column_config.LinkColumn(
            "", display_text=":material/open_in_new:", width=40, help="Open the latent's page (new tab)"
        ),
        "latent": st.column_config.NumberColumn("latent", format="%d", width="small"),
        "description": st.column_config.TextColumn("description", width="large"),
        "rel_norm": st.column_config.ProgressColumn("rel norm", min_value=0.0, max_value=1.0, format="%.2f"),
        "shift": st.column_config.NumberColumn("shift", format="%.2f"),
        "dec_cos": st.column_config.NumberColumn("cos", format="%.2f"),
        "freq": st.column_config.NumberColumn("density", format="%.2e"),
        "max_act": st.column_config.NumberColumn("max act", format="%.2f"),
        "explanation_score": st.column_config.NumberColumn("score", format="%.2f"),
    },
)
rows = event.selection.rows if event else []
if rows:
    st.session_state["table_gen"] = gen + 1
    _ui.open_latent(int(view.iloc[rows[0]]["latent"]))
if len(order):
    st.caption(
        f"Rows {(page - 1) * PAGE_ROWS + 1:,}–{min(page * PAGE_ROWS, len(order)):,} of this order"
        + (f" (page {page} of {n_pages})" if n_pages > 1 else "")
        + ". Select a row to open its latent page; previous / next there follow this order."
    )
else:
    st.caption("No latent matches these filters; widen a range or clear a filter.")
