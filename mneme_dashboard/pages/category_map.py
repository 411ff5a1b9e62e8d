"""Category map: UMAP of descriptions by category; per-category attribution counts."""

import streamlit as st

from mneme_core.views import explore, plots
from mneme_dashboard import _ui

run = _ui.current_run()
_ui.require(run, "diff", "categories", what="The category map")
path, mtime = _ui.run_key(run)

st.title("Category map")
labels = [v for v in ("suppressed", "amplified", "unchanged") if v in set(run.latents.get("attribution", []))]
chosen = st.pills(
    "Attribution", labels, selection_mode="multi", default=[v for v in labels if v != "unchanged"], key="f_map_attr"
)
event = st.plotly_chart(
    _ui.cached_figure("category_map", path, mtime, tuple(chosen or labels)),
    key="umap",
    on_select="rerun",
    selection_mode="points",
)
picked = _ui.clicked_latent(event)
if picked is not None:
    _ui.open_latent(picked)
st.caption("Click a point to open its latent; point size grows with |shift|.")

summary = explore.category_summary(run.latents)
a, b = st.columns([2, 3])
a.subheader("Per category")
a.dataframe(
    summary,
    hide_index=True,
    height=420,
    column_config={"mean_shift": st.column_config.NumberColumn("mean shift", format="%.2f")},
)
b.plotly_chart(plots.category_bars(summary), key="cat_bars")
