"""Explorer filters, sort order, prev/next navigation, links and similar latents."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd
import pytest

from mneme_core.views import explore


@pytest.fixture
def table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "latent": [0, 1, 2, 3, 4, 5],
            "attribution": ["suppressed", "unchanged", "amplified", "suppressed", "unchanged", None],
            "label_by_norm": ["base_only", "shared", "ft_only", "other", "shared", "shared"],
            "category": ["biology", "law", "biology", "chemistry", None, "law"],
            "rel_norm": [0.05, 0.5, 0.95, 0.3, 0.55, np.nan],
            "shift": [-3.0, 0.1, 2.5, -1.5, 0.0, 0.2],
            "description": ["Virus proteins", "court cases", "viral RNA", "acids", "", None],
        }
    )


def test_label_range_and_text_filters_combine(table):
    spec = explore.FilterSpec(labels={"attribution": ["suppressed", "amplified"]}, ranges={"rel_norm": (0.0, 0.5)})
    assert explore.apply_filters(table, spec)["latent"].tolist() == [0, 3]
    assert explore.apply_filters(table, explore.FilterSpec(text="VIR"))["latent"].tolist() == [0, 2]
    # missing labels are filterable as ''
    assert explore.apply_filters(table, explore.FilterSpec(labels={"category": [""]}))["latent"].tolist() == [4]
    # NaN never passes a range filter
    assert 5 not in explore.apply_filters(table, explore.FilterSpec(ranges={"rel_norm": (0, 1)}))["latent"].tolist()


def test_text_search_is_literal_not_regex(table):
    assert explore.apply_filters(table, explore.FilterSpec(text="(")).empty


def test_sort_with_ties_broken_by_latent_and_nan_last(table):
    out = explore.apply_filters(table, explore.FilterSpec(sort_by="rel_norm", ascending=False))
    assert out["latent"].tolist() == [2, 4, 1, 3, 0, 5]
    out = explore.apply_filters(table, explore.FilterSpec(sort_by="latent", ascending=False))
    assert out["latent"].tolist() == [5, 4, 3, 2, 1, 0]


def test_sort_descending_puts_infinity_first_and_strings_sort(table):
    t = table.assign(nu=[1.0, np.inf, 0.5, np.nan, -np.inf, 2.0])
    assert explore.apply_filters(t, explore.FilterSpec(sort_by="nu", ascending=False))["latent"].tolist() == [
        1,
        5,
        0,
        2,
        4,
        3,
    ]
    out = explore.apply_filters(t, explore.FilterSpec(sort_by="category"))
    assert out["latent"].tolist() == [0, 2, 3, 1, 5, 4]  # biology, biology, chemistry, law, law, missing


def test_options_and_bounds(table):
    opts = explore.label_options(table)
    assert opts["attribution"][0] == "suppressed" and "" in opts["attribution"]
    assert explore.range_bounds(table)["shift"] == (-3.0, 2.5)
    bounds = explore.range_bounds(table)
    assert not explore.is_active(explore.FilterSpec(ranges={"shift": bounds["shift"]}), bounds)
    assert explore.is_active(explore.FilterSpec(ranges={"shift": (-1.0, 2.5)}), bounds)


def test_neighbours_follow_the_filtered_order():
    order = np.array([7, 3, 9])
    assert explore.neighbours(order, 3) == (7, 9)
    assert explore.neighbours(order, 7) == (None, 3)
    assert explore.neighbours(order, 9) == (3, None)
    assert explore.neighbours(order, 4) == (None, None)


def test_links_carry_run_and_latent(table):
    url = explore.latent_url("runs/a b&c", 12)
    q = parse_qs(urlparse(url).query)
    assert urlparse(url).path == "latent" and q == {"run": ["runs/a b&c"], "latent": ["12"]}
    linked = explore.with_links(table, "runs/x")
    assert parse_qs(urlparse(linked["open"].iloc[3]).query) == {"run": ["runs/x"], "latent": ["3"]}


def test_latent_row_by_id(table):
    assert explore.latent_row(table, 3)["shift"] == -1.5
    assert explore.latent_row(table.iloc[::-1], 3)["shift"] == -1.5
    assert explore.latent_row(table, 99) is None


def test_similar_latents_by_decoder_cosine():
    rng = np.random.default_rng(0)
    dec = rng.normal(size=(50, 8))
    dec[17] = dec[4] * 3 + 0.01 * rng.normal(size=8)  # same direction, other scale
    dec[23] = -dec[4]
    sim = explore.similar_latents(dec, 4, k=5)
    assert sim["latent"].iloc[0] == 17 and sim["cosine"].iloc[0] > 0.99
    assert 4 not in sim["latent"].tolist() and 23 not in sim["latent"].tolist()
    assert sim["cosine"].is_monotonic_decreasing


def test_category_summary_counts(table):
    s = explore.category_summary(table).set_index("category")
    assert s.loc["biology", "suppressed"] == 1 and s.loc["biology", "amplified"] == 1
    assert s.loc["(none)", "latents"] == 1
    assert explore.attribution_counts(table)["suppressed"] == 2


def test_dead_fraction_prefers_the_whole_store_and_says_what_it_counted():
    train = {"dead_fraction": 0.3, "n_val_tokens": 4899}
    diff = {"never_fired": 23, "n_latents": 230, "n_tokens": 195958}
    assert explore.dead_fraction(train, diff) == (0.1, "fire on none of the 195,958 analysis tokens")
    assert explore.dead_fraction(train, {}) == (0.3, "silent on the 4,899 held-out tokens")
    assert explore.dead_fraction({}, {}) == (None, "")


def test_latents_under_the_evidence_floor_are_counted_apart_from_unchanged(table):
    t = table.assign(beta_state=["present", "too_few_fires", "present", "present", "present", "too_few_fires"])
    t.loc[5, "attribution"] = "unchanged"  # stored as the label's default
    counts = explore.attribution_counts(t)
    assert counts == {"suppressed": 2, "unchanged": 1, explore.TOO_FEW_FIRES: 2, "amplified": 1}
    assert list(counts) == list(explore.ATTRIBUTION_ORDER)
    assert "shared" not in counts  # norm labels are their own count
    assert explore.norm_label_counts(t) == {"shared": 3, "base_only": 1, "ft_only": 1, "other": 1}
    assert explore.shown_attribution("unchanged", "too_few_fires") == explore.TOO_FEW_FIRES
    assert explore.shown_attribution("unchanged", "present") == "unchanged"
    assert "too few" in explore.shift_note("too_few_fires") and "undefined" in explore.shift_note("absent_ft")


def test_quantile_samples_that_repeat_a_top_context_are_dropped():
    ctx = pd.DataFrame(
        {
            "kind": ["top", "top", "quantile", "quantile", "quantile", "quantile"],
            "tokens": [["a", "b", "c"], ["x", "y"], ["b", "c", "d"], ["a", "b", "c"], ["p", "q"], ["r"]],
            "token_index": [100, 200, 101, 900, 500, 202],
        }
    )
    # 101 and 202 are centred inside a top window (within 3 tokens), 900 shows a top's text
    assert explore.distinct_samples(ctx).index.tolist() == [0, 1, 4]
    assert explore.distinct_samples(ctx.drop(columns="token_index")).index.tolist() == [0, 1, 2, 4, 5]


def test_confirmation_headline_counts_confirmed_predicted_categories():
    table = pd.DataFrame(
        {
            "category": ["animals", "plants", "law"],
            "scored_category": ["animals", "plants", "law"],
            "intervention": "ablate",
            "set": "target",
            "role": ["predicted", "predicted", "degraded, not predicted"],
            "status": ["confirmed", "not confirmed", "confirmed"],
            "latents": [[1], [2], [3]],
            **{c: 0.0 for c in ("n_latents", "score_before", "score_after", "effect", "control_mean", "control_sd")},
        }
    )
    record = {"P": ["animals", "plants"], "T": ["animals", "law"], "category_scores": []}
    assert explore.confirmation_headline(None, record) is None
    # the evaluation no longer lists these latents, so both verdicts are stale
    line = explore.confirmation_headline(table, record)
    assert line == "Causal confirmation: 0 of 2 predicted categories confirmed (2 stale: the evaluation changed since)"
    record["category_scores"] = [{"category": c, "latents": [j]} for c, j in (("animals", 1), ("plants", 2))]
    line = explore.confirmation_headline(table, record)
    assert line == "Causal confirmation: 1 of 2 predicted categories confirmed"


def test_diffing_settings_are_the_runs_own_with_defaults_for_what_it_did_not_record():
    from mneme_core.common.config import DiffingConfig

    recorded = explore.diffing_settings({"config": {"diffing": {"tau": 0.25, "z": 2.0}}})
    assert (recorded.tau, recorded.z, recorded.min_fires) == (0.25, 2.0, DiffingConfig().min_fires)
    assert explore.diffing_settings({}) == DiffingConfig()  # a manifest from before any config was kept


def test_precision_note_names_what_ran_below_float32():
    def manifest(base="float32", ft="float32", forward="", encoder="float32"):
        models = {"base": {"dtype": base}, "ft": {"dtype": ft}}
        return {"config": {"models": models, "activations": {"forward_dtype": forward}, "training": {"dtype": encoder}}}

    assert explore.precision_note(manifest()) is None
    assert explore.precision_note({}) is None  # an old manifest without a config
    assert explore.precision_note(manifest(forward="bfloat16")) == "collected in bfloat16"
    assert explore.precision_note(manifest(base="bfloat16", ft="bfloat16")) == "collected in bfloat16"
    assert explore.precision_note(manifest(base="bfloat16", ft="bfloat16", forward="float32")) is None  # recast up
    assert (
        explore.precision_note(manifest(forward="bfloat16", encoder="bfloat16"))
        == "collected in bfloat16 · cross-coder encoder in bfloat16"
    )
    embedded = manifest(encoder="bfloat16")
    embedded["config"]["interpret"] = {"embedding_dtype": "bfloat16"}
    assert explore.precision_note(embedded) == "cross-coder encoder in bfloat16 · sentence embedder in bfloat16"


def test_numbers_read_as_people_write_them():
    from mneme_core.views.report import _table

    assert explore.fmt(-0.0) == "0" and explore.fmt(-np.log10(1.0)) == "0"  # no "-0" for a score of p = 1
    assert explore.fmt(0.123456, 3) == "0.123" and explore.fmt(float("nan")) == "—" and explore.fmt(None) == "—"
    assert ">-0<" not in _table(pd.DataFrame({"score": [-0.0, 2.5]})) and ">0<" in _table(pd.DataFrame({"s": [-0.0]}))
