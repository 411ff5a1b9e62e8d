"""Category map: UMAP of descriptions by category; per-category attribution counts."""

import math

import pandas as pd
import streamlit as st

from mneme_core.views import explore, plots
from mneme_dashboard import _ui


def mean_shift_text(value: float) -> str:
    """Two decimals, '—' where a category has no shift (none of its latents has both β),
    and no '-0.00': a mean of -0.0005 reads as no change, not as a suppression."""
    return "—" if pd.isna(value) or not math.isfinite(value) else f"{round(value, 2) + 0.0:.2f}"


run = _ui.current_run()
_ui.require(run, "diff", "categories", what="The category map")
path, mtime = _ui.run_key(run)

st.title("Category map")
labels = [v for v in ("suppressed", "amplified", "unchanged") if v in set(run.latents.get("attribution", []))]
# the attributed latents first; a run with none (a null control) opens on all of them
default = [v for v in labels if v != "unchanged"] or labels
st.session_state.setdefault("f_map_attr", default)  # as session state: a widget default beside it warns
_ui.fit_choices("f_map_attr", labels)
chosen = st.pills("Attribution", labels, selection_mode="multi", key="f_map_attr")
if chosen:
    event = st.plotly_chart(
        _ui.cached_figure("category_map", path, mtime, tuple(chosen)),
        key="umap",
        on_select="rerun",
        selection_mode="points",
    )
    picked = _ui.clicked_latent(event)
    if picked is not None:
        _ui.open_latent(picked)
    st.caption("Click a point to open its latent; point size grows with |shift|.")
else:
    st.info("Select at least one attribution to draw the map.")

summary = explore.category_summary(run.latents)
a, b = st.columns([2, 3])
a.subheader("Per category")
# the table keeps the numbers (sorting stays numeric); the styler only changes how they read
a.dataframe(
    summary.style.format(mean_shift_text, subset=["mean_shift"]),
    hide_index=True,
    height=420,
    column_config={"mean_shift": "mean shift"},
    placeholder="—",  # a styled empty cell still reads "None" without it
)
b.plotly_chart(plots.category_bars(summary), key="cat_bars")
