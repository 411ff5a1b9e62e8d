"""Diff distributions: relative norm, cosine, β scatter, shift; overlay runs of one base model."""

import streamlit as st

from mneme_core.views import plots
from mneme_dashboard import _ui

run = _ui.current_run()
_ui.require(run, "diff", what="The diff distributions")
path, mtime = _ui.run_key(run)

st.title("Diff distributions")
diffing = run.manifest.get("config", {}).get("diffing", {})
others = {
    label: p
    for label, p in _ui.discover_runs(tuple(map(str, _ui.run_roots()))).items()
    if p != path and _ui.same_base_model(p, path)
}
overlay = st.multiselect(
    "Overlay runs of the same base model",
    list(others),
    key="f_overlay",
    help="e.g. the same base model unlearned at increasing strength",
    placeholder="none found" if not others else "choose runs",
)
runs = {run.name: run.latents}
for label in overlay:
    try:
        runs[label] = _ui.open_cached(others[label]).latents
    except Exception as exc:  # one bad run must not hide the others
        st.warning(f"{label} could not be opened: {exc}")

a, b = st.columns(2)
band = tuple(diffing.get("shared_band", (0.4, 0.6)))
a.plotly_chart(
    plots.rel_norm_histogram(runs, diffing.get("base_only_below", 0.1), diffing.get("ft_only_above", 0.9), band),
    key="rel_hist",
)
b.plotly_chart(plots.cosine_histogram(runs), key="cos_hist")
a, b = st.columns([3, 2])
with a:
    target = st.segmented_control(
        "β target",
        ["err", "recon"],
        default="err",
        key="f_beta_target",
        format_func=lambda t: {"err": "error (paper)", "recon": "reconstruction"}[t],
    )
    event = st.plotly_chart(
        _ui.cached_figure("beta_scatter", path, mtime, target or "err"),
        key="beta_scatter",
        on_select="rerun",
        selection_mode="points",
    )
    st.caption("Click a point to open its latent.")
    picked = _ui.clicked_latent(event)
    if picked is not None:
        _ui.open_latent(picked)
b.plotly_chart(plots.shift_histogram(runs, float(diffing.get("tau", 1.0))), key="shift_hist")
