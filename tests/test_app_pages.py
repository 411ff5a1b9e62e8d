"""Dashboard pages under AppTest, on the bundled demo study and the tiny run: what a reader
sees matches what the run holds (attribution under the evidence floor, distinct context
samples, the confirmation verdict, the overview's own URL, labelled inputs, readable tokens).

The demo run is copied first: opening the explorer or a latent page writes the triage store
into the run folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.proto.LabelVisibility_pb2 import LabelVisibility
from streamlit.testing.v1 import AppTest
from test_app import TIMEOUT, metric, page

from mneme_core import open_run
from mneme_core.evaluation import confirmation_view as cv
from mneme_core.views import explore
from mneme_dashboard import ENTRY as APP

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo" / "rmu"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    if not (DEMO / "run.json").is_file():
        pytest.skip("the bundled demo run is not in this checkout")
    return Path(shutil.copytree(DEMO, tmp_path_factory.mktemp("demo") / "rmu"))


def under_floor_latent(run_path: Path) -> int:
    """A described latent that fires, under the evidence floor, stored as "unchanged"
    (chosen from the demo as built, so a rebuild that renumbers its latents keeps the test)."""
    lat = open_run(run_path).latents
    rows = lat[
        (lat["beta_state"] == "too_few_fires")
        & (lat["attribution"] == "unchanged")
        & (lat["freq"] > 0)
        & lat["description"].notna()
    ]
    return int(rows["latent"].iloc[0])


def repeating_latent(run_path: Path) -> int:
    """A latent some of whose quantile samples show passages of its top contexts."""
    contexts = open_run(run_path).contexts()
    return next(int(k) for k, ctx in contexts.groupby("latent") if len(explore.distinct_samples(ctx)) < len(ctx))


def captions(at: AppTest) -> list[str]:
    return [c.value for c in at.caption]


def test_overview_is_served_at_its_own_name_too(tiny_run):
    """``/overview?run=...`` must open the overview, not "Page not found": Streamlit routes a
    URL to the page whose url_pathname it names, and the default page's is the root."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    routes = {
        info.get("url_pathname"): Path(str(info.get("script_path"))).name for info in at._registered_pages.values()
    }
    assert routes[""] == "overview.py" and routes["overview"] == "overview.py"


def test_overview_counts_too_few_fires_apart_and_names_the_norm_labels(demo):
    latents = open_run(demo).latents
    at = page(demo, "overview")
    under = int((latents["beta_state"] == "too_few_fires").sum())
    unchanged = int(((latents["attribution"] == "unchanged") & (latents["beta_state"] != "too_few_fires")).sum())
    assert under and unchanged
    by_attribution = next(c for c in captions(at) if c.startswith("By attribution"))
    assert f"unchanged: **{unchanged}**" in by_attribution and f"too few fires to tell: **{under}**" in by_attribution
    assert "shared" not in by_attribution  # a norm label, not an attribution
    by_norm = next(c for c in captions(at) if "decoder norm" in c)
    assert f"shared: **{int((latents['label_by_norm'] == 'shared').sum())}**" in by_norm


def test_overview_shows_each_fve_whole_and_the_confirmation_verdict(demo):
    run = open_run(demo)
    train = run.stage_metrics("train")
    at = page(demo, "overview")
    assert metric(at, "FVE base") == explore.fmt(train["fve_base"], 4)
    assert metric(at, "FVE ft") == explore.fmt(train["fve_ft"], 4)
    summary = cv.summary(cv.load(demo), run.evaluation)
    predicted = summary[summary["role"] == "predicted"]
    confirmed = int((predicted["confirmation"] == cv.CONFIRMED).sum())
    links = {p.proto.label: p.proto.page for p in at.get("page_link")}
    line = f"Causal confirmation: {confirmed} of {len(predicted)} predicted categories confirmed"
    assert links[line] == "side_effects"


def test_overview_without_confirmation_says_nothing_about_it(tiny_run):
    at = page(tiny_run, "overview")
    assert not any("confirmation" in p.proto.label.lower() for p in at.get("page_link"))


def test_latent_under_the_evidence_floor_is_not_called_unchanged(demo):
    latent = under_floor_latent(demo)
    row = explore.latent_row(open_run(demo).latents, latent)
    assert row["beta_state"] == "too_few_fires" and row["attribution"] == "unchanged"  # as stored
    at = page(demo, "latent", latent=latent)
    text = " ".join(m.value for m in at.markdown)
    assert "**too few fires to tell**" in text and "**unchanged**" not in text
    assert "no shift: too few firing tokens" in text and "± —" not in text


def test_latent_page_drops_quantile_samples_that_repeat_a_top_context(demo):
    latent = repeating_latent(demo)
    ctx = open_run(demo).contexts(latent)
    top = ctx[ctx["kind"] == "top"]
    at = page(demo, "latent", latent=latent)
    shown = explore.distinct_samples(ctx)
    assert len(shown) < len(ctx)  # the demo holds repeats
    html_out = "".join(h.value for h in at.html)
    assert html_out.count('class="ctx"') == len(shown)
    assert any(m.value == f"**Samples across activation quantiles** ({len(shown) - len(top)})" for m in at.markdown)


def test_explorer_page_input_has_a_visible_label(demo):
    at = page(demo, "explorer")
    box = at.number_input(key="f_page")
    assert box.label.startswith("Page") and box.proto.label_visibility.value == LabelVisibility.VISIBLE


def test_prompt_lab_shows_decoded_tokens_escaped_and_says_what_the_colour_is(tiny_run, tmp_path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    at = page(run, "prompt_lab")
    at.text_area(key="lab_text").set_value("the <b> cat").run()
    assert not at.exception, [e.value for e in at.exception]
    tokens = at.dataframe[0].value["token"].tolist()
    assert "".join(tokens).strip() == "the <unk> cat"  # decoded text with its spacing, "<b>" unknown
    html_out = "".join(h.value for h in at.html)
    assert "&lt;unk&gt;" in html_out and "<unk>" not in html_out
    heading = next(m.value for m in at.markdown if "coloured" in m.value)
    assert "|ft − base|" in heading and "how much more" not in heading
