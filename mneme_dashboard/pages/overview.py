"""Overview: the study card, attribution counts, headline result, missing stages."""

import streamlit as st

from mneme_core.evaluation import confirmation_view as cv
from mneme_core.run.store import STAGES
from mneme_core.views import explore, plots, render
from mneme_dashboard import _ui

run = _ui.current_run()
m = run.manifest
train = run.stage_metrics("train")
collect = run.stage_metrics("collect")

st.title(run.name)
models = m.get("models", {})
base = models.get("base", {}).get("path", "?") if isinstance(models.get("base"), dict) else models.get("base", "?")
ft = models.get("ft", {}).get("path", "?") if isinstance(models.get("ft"), dict) else models.get("ft", "?")
corpus = m.get("corpus", {})
precision = explore.precision_note(m)
st.markdown(
    f"**Base** `{base}` → **fine-tuned** `{ft}` · layer **{m.get('layer', '?')}** · corpus "
    f"`{', '.join(corpus.get('files', [])) or corpus.get('dataset', '?')}`"
    + (f" · **{precision}**" if precision else "")
)

dead, dead_basis = explore.dead_fraction(train, run.stage_metrics("diff"))
cc = m.get("config", {}).get("crosscoder", {})
cards = [
    ("Tokens", collect.get("n_tokens")),
    ("Latents", train.get("n_latents", cc.get("n_latents") or len(run.latents) or None)),
    ("k", train.get("k", cc.get("k"))),
    ("FVE base", train.get("fve_base")),  # one card per model: "0.815 / 0.8" did not fit one
    ("FVE ft", train.get("fve_ft")),
    ("Dead fraction", dead),
    ("L0", train.get("l0")),
]
cols = st.columns(len(cards))
helps = {"Dead fraction": f"latents that {dead_basis}" if dead_basis else None}
for col, (label, value) in zip(cols, cards):
    col.metric(label, explore.fmt(value, 4) if value is not None else "—", help=helps.get(label))

left, right = st.columns([3, 2])
with left:
    st.subheader("Stages")
    rows = [{"stage": s, "status": run.stage_status(s), "what": _ui.STAGE_HINT[s]} for s in STAGES]
    st.dataframe(rows, hide_index=True, width="stretch")
    missing = run.missing_stages()
    if missing:
        st.info(_ui.missing_message(run, *missing, what="The full study"), icon=":material/hourglass_empty:")
with right:
    counts = explore.attribution_counts(run.latents)
    if counts:
        st.plotly_chart(plots.attribution_bar(counts), key="attr_bar")
        st.caption("By attribution: " + " · ".join(f"{k}: **{v}**" for k, v in counts.items()))
        norms = explore.norm_label_counts(run.latents)
        if norms:
            st.caption(
                "By relative decoder norm (a separate label): " + " · ".join(f"{k}: **{v}**" for k, v in norms.items())
            )
    else:
        st.info("No attribution yet: the **diff** stage labels latents.", icon=":material/hourglass_empty:")

st.subheader("Side effects")
evaluation = run.evaluation
if evaluation and run.stage_status("evaluate") == "complete":
    from mneme_core.evaluation.evaluate import DIRECTIONS
    from mneme_core.evaluation.sideeffects import headline

    # both questions: what degraded (from suppressed latents) and, for a fine-tune that
    # taught something, what improved (from amplified latents); older records have one
    for direction in DIRECTIONS:
        numbers = headline(evaluation, direction)
        if "note" in numbers:
            st.caption(f"{direction.capitalize()}: {numbers['note']}")
            continue
        st.markdown(f"**{direction.capitalize()}**")
        for col, (label, value) in zip(st.columns(len(numbers)), numbers.items()):
            col.metric(label, explore.fmt(value, 3))
        _ui.link_to(
            "side_effects",
            f"Open the side-effects page ({direction})",
            run,
            icon=":material/arrow_forward:",
            direction=direction,
        )
    try:
        confirmation = explore.confirmation_headline(cv.load(run.path), evaluation)
    except cv.ConfirmationFileError as exc:
        st.warning(render.escape_markdown(str(exc)), icon=":material/error:")
    else:
        if confirmation:
            _ui.link_to("side_effects", confirmation, run, icon=":material/science:")
else:
    st.caption("No evaluation yet: the **evaluate** stage compares predictions with a benchmark.")

with st.expander("Provenance and configuration"):
    st.json({"provenance": m.get("provenance", []), "config": m.get("config", {})}, expanded=False)
