"""Prompt lab: type text, see which latents fire per token and how base and ft differ."""

import streamlit as st

from mneme_core.analysis import promptlab
from mneme_core.views import explore, render
from mneme_dashboard import _ui

run = _ui.current_run()
_ui.require(run, "train", what="The prompt lab")
path, mtime = _ui.run_key(run)

st.title("Prompt lab")
st.caption("Runs the text through both models up to the run's layer and through its cross-coder.")


@st.cache_resource(max_entries=2, show_spinner="Loading both models and the cross-coder…")
def lab_for(path: str, mtime: float) -> promptlab.Lab:
    return promptlab.load_lab(path, _ui.open_cached(path).manifest)


try:
    lab = lab_for(path, mtime)
except promptlab.LabError as exc:
    st.warning(f"The run's models cannot be loaded here, so the prompt lab is off: {exc}", icon=":material/block:")
    st.caption(
        "The models named in the run's config must be reachable from this machine (local folders or a cached hub copy)."
    )
    st.stop()

text = st.text_area("Text", value="The virus replicates inside the host cell.", key="lab_text", height=100)
try:
    analysis = promptlab.analyse(lab, text)
except promptlab.LabError as exc:
    st.info(str(exc))
    st.stop()

firing = promptlab.firing_table(analysis, run.latents)
# one colour scale cannot show a sign, so it shows the size of the difference; the table has the sign
st.markdown(
    "**Tokens coloured by how much the fine-tuned model's write differs from the base's, |ft − base|, "
    "in either direction** (hover for the value; the table's *ft − base* column has the sign)"
)
st.html(render.contexts_html([(analysis.tokens, firing["ft − base"].abs().tolist(), "|ft − base|")]))
st.dataframe(
    firing,
    hide_index=True,
    height=320,
    column_config={c: st.column_config.NumberColumn(format="%.3g") for c in ("base write", "ft write", "ft − base")},
)

st.subheader("Latents on this text")
summary = promptlab.latent_summary(analysis, lab.norms_MF, run.latents)
summary = explore.with_links(summary, st.session_state.get("run", str(run.path)))
st.dataframe(
    summary,
    hide_index=True,
    column_order=["open", *[c for c in summary.columns if c != "open"]],
    column_config={"open": st.column_config.LinkColumn("", display_text=":material/open_in_new:", width=40)},
    placeholder="—",
)
st.caption("Click ↗ to open a latent's page.")
