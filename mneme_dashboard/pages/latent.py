"""One latent: what it is, the numbers behind its attribution, where it fires."""

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from mneme_core.analysis.topics import TOPICS_FILE
from mneme_core.run.reader import damaged
from mneme_core.views import explore, plots, render
from mneme_core.views.triage import MARKS, TriageStore
from mneme_dashboard import _ui

run = _ui.current_run()
_ui.require(run, "diff", what="The latent page")
path, mtime = _ui.run_key(run)
table = run.latents

try:
    latent = int(st.query_params.get("latent", table["latent"].iloc[0]))
except ValueError:
    latent = -1
row = explore.latent_row(table, latent)
if row is None:
    st.title("Latent not found")
    asked = render.escape_markdown(repr(st.query_params.get("latent")))  # URL text: never live Markdown
    st.error(f"This run has no latent {asked} (ids 0–{int(table['latent'].max())}).")
    st.stop()
st.query_params["latent"] = str(latent)


def val(col: str) -> Any:
    """The row's value, or None when the column is absent or the value missing (NaN / NA)."""
    value = row.get(col) if row is not None else None
    return None if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)) else value


st.title(f"Latent {latent}")
order = st.session_state.get("explorer_order")
in_order = order is not None and latent in set(order.tolist())
prev, nxt = explore.neighbours(order if order is not None and in_order else table["latent"].to_numpy(), latent)
nav = st.columns([1, 1, 2, 6])
with nav[0]:
    if prev is not None:
        _ui.link_to("latent", f"← {prev}", run, latent=prev)
with nav[1]:
    if nxt is not None:
        _ui.link_to("latent", f"{nxt} →", run, latent=nxt)
with nav[2]:
    jump = st.number_input(
        "Go to latent",
        min_value=0,
        max_value=int(table["latent"].max()),
        value=latent,
        key=f"jump_{latent}",
        label_visibility="collapsed",
    )
    if jump != latent:
        _ui.open_latent(jump)
if in_order:
    nav[3].caption("previous / next follow the explorer's current filter and sort")
elif order is not None:
    nav[3].caption("previous / next by latent id: this latent is not in the explorer's current filter")
else:
    nav[3].caption("previous / next by latent id (filter in the explorer to walk a subset)")

md = render.escape_markdown
st.markdown(f"#### {md(val('description')) if val('description') else '_no description yet (interpret stage)_'}")
badges = [
    f"**{md(explore.shown_attribution(val('attribution') or '?', val('beta_state')))}**",
    f"norm label **{md(val('label_by_norm') or '?')}**",
    f"category **{md(val('category') or '—')}**",
]
if val("explainer"):
    badges.append(f"explainer **{md(val('explainer'))}** · score **{explore.fmt(val('explanation_score'), 3)}**")
st.markdown(" · ".join(badges))

cols = st.columns(6)
for c, (label, key) in zip(
    cols,
    [
        ("‖d base‖", "dec_norm_base"),
        ("‖d ft‖", "dec_norm_ft"),
        ("relative norm", "rel_norm"),
        ("cosine", "dec_cos"),
        ("shift log2(β_ft/β_base)", "shift"),
        ("density", "freq"),
    ],
):
    c.metric(label, explore.fmt(val(key), 4))

left, right = st.columns([1, 1])
with left:
    st.markdown("**Latent scaling β** (how much of the latent each model's activations hold)")
    beta = pd.DataFrame(
        [
            [explore.fmt(val(f"beta_{t}_{m}"), 4) for m in ("base", "ft")]
            + [explore.fmt(val(f"nu_{t.split('_')[0]}"), 4) if "own" not in t else "—"]
            for t in ("err", "recon", "err_own", "recon_own")
        ],
        index=["error target", "reconstruction target", "error, own-row probe", "reconstruction, own-row probe"],
        columns=["β base", "β fine-tuned", "ν = β_base/β_ft"],
    )
    st.table(beta)
    if val("beta_base") is not None and val("beta_state") is not None:
        st.markdown(
            f"**Primary β** (what the label uses; {md(val('probe') or '?')}-row probe): base "
            f"{explore.fmt(val('beta_base'), 4)} ± {explore.fmt(val('beta_se_base'), 4)} · fine-tuned "
            f"{explore.fmt(val('beta_ft'), 4)} ± {explore.fmt(val('beta_se_ft'), 4)} · "
            + (
                f"shift {explore.fmt(val('shift'), 3)} ± {explore.fmt(val('shift_se'), 3)}"
                if val("shift") is not None
                else f"no shift: {md(explore.shift_note(val('beta_state')))}"
            )
            + f" · state **{md(val('beta_state'))}** · "
            f"{explore.fmt(val('n_fires'), 0)} firing tokens"
        )
    st.caption(f"max activation {explore.fmt(val('max_act'), 4)}")
with right:
    # a stale contexts stage's histograms are of the previous dictionary's latent of this number
    contexts_done = run.stage_status("contexts") == "complete"
    hist = _ui.histogram(path, mtime, latent) if contexts_done else pd.DataFrame()
    if len(hist):
        h = hist.iloc[0]
        st.plotly_chart(plots.activation_histogram(h["edges"], h["counts"], latent), key="act_hist")
    else:
        st.caption(
            "No activation histogram (the **contexts** stage writes them"
            + (")." if contexts_done else "; it is not complete).")
        )

st.subheader("Where it fires")
try:
    shares = _ui.topics(path, mtime, latent) if run.stage_status("categories") == "complete" else pd.DataFrame()
except (OSError, ValueError) as exc:  # a damaged file: say so, keep the rest of the page
    shares = pd.DataFrame()
    st.caption(render.escape_markdown(str(damaged(run.path / TOPICS_FILE, exc))))
if len(shares):
    st.plotly_chart(plots.topic_bars(shares, latent), key="topic_bars")
    st.caption(
        "Bars: the share of this latent's activation over every analysis token, by the topic of the "
        "packed context the token sits in (each context labelled from its text, as for the dictionary-free "
        "baseline; topics under 1% left out). Ticks: the topic's share of all tokens. Its **category** above "
        "comes from its top windows only, and can differ."
    )
elif run.stage_status("categories") == "complete":
    why = run.stage_metrics("categories").get("topic_profile") or "the run was categorised before MNEME measured it"
    st.caption(
        "No share of activation by topic (the **categories** stage measures it from the activation store): "
        + render.escape_markdown(str(why))
    )
ctx = explore.distinct_samples(_ui.contexts(path, mtime, latent))
if not _ui.note_missing(run, "contexts", what="Activating contexts"):
    pass
elif len(ctx):
    scale = float(np.nanmax(ctx["max_act"])) if "max_act" in ctx.columns else None
    for kind, title in (("top", "Top-activating contexts"), ("quantile", "Samples across activation quantiles")):
        part = ctx[ctx["kind"] == kind]
        if len(part):
            st.markdown(f"**{title}** ({len(part)})")
            rows = [
                (list(r.tokens), list(r.acts), f"#{int(r.rank)} · max {float(np.max(r.acts)):.3g}")
                for r in part.itertuples()
            ]
            st.html(render.contexts_html(rows, scale=scale))
else:
    st.caption("No contexts were stored for this latent (it never fired on the corpus).")

low, high = st.columns([1, 1])
with low:
    st.subheader("Similar decoder directions")
    try:
        dec = _ui.decoder_rows(path, mtime)
    except Exception as exc:  # a missing or foreign cross-coder must not break the page
        dec = None
        st.caption(f"Cross-coder weights could not be read ({type(exc).__name__}: {exc}).")
    if dec is not None and latent < dec.shape[0]:
        sim = explore.similar_latents(dec, latent, k=8)
        sim = sim.merge(
            table[[c for c in ("latent", "description", "attribution") if c in table.columns]], on="latent", how="left"
        )
        st.dataframe(
            explore.with_links(sim, st.session_state.get("run", str(run.path))),
            hide_index=True,
            column_order=["open", *sim.columns],
            column_config={
                "open": st.column_config.LinkColumn("", display_text=":material/open_in_new:", width=40),
                "cosine": st.column_config.NumberColumn(format="%.3f"),
            },
        )
    elif dec is None:
        st.caption("No cross-coder weights in this run (the **train** stage writes them).")
with high:
    st.subheader("Triage")
    store = TriageStore(run.path)
    current = store.get_mark(latent)
    with st.form(f"mark_{latent}", border=False):
        mark = st.radio("Mark", MARKS, index=MARKS.index(current["mark"]) if current else None, horizontal=True)
        note = st.text_area("Note", value=current["note"] if current else "", height=80)
        if st.form_submit_button("Save mark", icon=":material/save:") and mark:
            store.set_mark(latent, mark, note, author=st.session_state.get("author", ""))
            st.toast(f"Latent {latent} marked '{mark}'")
            current = store.get_mark(latent)
    if current:
        st.caption(f"Current: **{current['mark']}**")
