"""Diff distributions: relative norm, cosine, β scatter, shift; overlay runs of one base model."""

import streamlit as st

from mneme_core.views import explore, plots
from mneme_dashboard import _ui

run = _ui.current_run()
_ui.require(run, "diff", what="The diff distributions")
path, mtime = _ui.run_key(run)

st.title("Diff distributions")
diffing = explore.diffing_settings(run.manifest)
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
a.plotly_chart(
    plots.rel_norm_histogram(runs, diffing.base_only_below, diffing.ft_only_above, diffing.shared_band),
    key="rel_hist",
)
b.plotly_chart(plots.cosine_histogram(runs), key="cos_hist")
a, b = st.columns([3, 2])
with a:
    # seeded as session state, as every remembered filter (_ui.keep_filters): a widget
    # default beside a value set that way makes Streamlit warn
    _ui.fit_choices("f_beta_target", list(plots.BETA_TARGETS), seed="primary", multi=False)
    target = st.segmented_control(
        "β shown",
        list(plots.BETA_TARGETS),
        key="f_beta_target",
        format_func=lambda t: {
            "primary": "primary (the labels')",
            "err": "error target, dominant row",
            "recon": "reconstruction target, dominant row",
        }[t],
        help="The attribution labels (the colours) are decided on the primary β: the error target, each latent "
        "probed along its dominant decoder row, or along each model's own row when the two rows disagree.",
    )
    event = st.plotly_chart(
        _ui.cached_figure("beta_scatter", path, mtime, target or "primary"),
        key="beta_scatter",
        on_select="rerun",
        selection_mode="points",
    )
    st.caption("Colours are the attribution labels, decided on the primary β. Click a point to open its latent.")
    picked = _ui.clicked_latent(event)
    if picked is not None:
        _ui.open_latent(picked)
b.plotly_chart(plots.shift_histogram(runs, diffing.tau), key="shift_hist")
b.caption(
    f"The dashed lines are ±τ (τ = {diffing.tau:g}); a label needs the shift to clear them by z = {diffing.z:g} "
    "standard errors, tested on the primary β: **amplified** when "
    r"$\beta_{ft} - 2^{\tau}\beta_{base} > z\sqrt{se_{ft}^2 + 4^{\tau} se_{base}^2}$ and "
    r"$\beta_{ft} > z\,se_{ft}$; **suppressed** when "
    r"$2^{-\tau}\beta_{base} - \beta_{ft} > z\sqrt{se_{ft}^2 + 4^{-\tau} se_{base}^2}$ and "
    r"$\beta_{base} > z\,se_{base}$; a latent firing on fewer than "
    f"{diffing.min_fires} analysis tokens is never labelled. So a latent just past a line can be unchanged."
)
