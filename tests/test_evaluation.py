"""Side-effect evaluation: degraded set T, predicted set P, metrics, baselines, the stage.

The Appendix C file holds the paper's Llama-3-8B MMLU numbers (top 10 subjects by drop
after RMU unlearning) with MMLU's real test question counts, plus 6 undegraded subjects.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mneme_core.benchmarks import load_benchmark_table
from mneme_core.common.atomic import write_parquet
from mneme_core.common.config import ConfigError, EvaluationConfig, load_config
from mneme_core.common.embeddings import get_embedder
from mneme_core.evaluation.evaluate import (
    EvaluationError,
    category_mapping,
    category_scores,
    default_predict_threshold,
    degraded_set,
    degraded_table,
    evaluate,
    metrics,
    naive_baseline,
    per_category_table,
    predict,
    random_baseline,
    run_stage,
    threshold_curve,
)
from mneme_core.run.reader import open_run
from mneme_core.run.store import init_run

APPENDIX_C = Path(__file__).parent / "data" / "appendix_c_llama3_8b.csv"
PAPER_TOP10 = [
    "professional_medicine",
    "medical_genetics",
    "virology",
    "college_medicine",
    "human_aging",
    "nutrition",
    "clinical_knowledge",
    "professional_law",
    "college_biology",
    "college_chemistry",
]
# Significant at 5% (one-sided z-test) AND drop > 0.05: all but college_biology (p = 0.12)
# and college_chemistry (p = 0.195), whose drops are within noise at 144 / 100 questions.
T_LLAMA = set(PAPER_TOP10[:8])
P_GIVEN = {"professional_medicine", "virology", "college_medicine", "nutrition", "college_biology", "astronomy"}


@pytest.fixture(scope="module")
def appendix_c() -> pd.DataFrame:
    return load_benchmark_table(APPENDIX_C)


@pytest.fixture(scope="module")
def embedder():
    return get_embedder()


# --------------------------------------------------------------------------- metrics


def test_metrics_hand_computed():
    m = metrics({"a", "b", "c"}, {"c", "d"}, {"a", "b", "c", "d", "e"})
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 1, 2, 1)
    assert m["accuracy"] == pytest.approx(1 / 3)  # Eq. 4: |T∩P| / |T|
    assert m["recall"] == pytest.approx(1 / 3)
    assert m["precision"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 / 5)
    assert m["specificity"] == pytest.approx(1 / 2)
    assert m["balanced_accuracy"] == pytest.approx((1 / 3 + 1 / 2) / 2)


@pytest.mark.parametrize(
    "T, P, U, expected",
    [
        # empty T: nothing to find -> accuracy/recall/balanced undefined; P is all false positives
        (
            set(),
            {"a"},
            {"a", "b"},
            dict(accuracy=None, recall=None, precision=0.0, f1=0.0, specificity=0.5, balanced_accuracy=None),
        ),
        # empty P: found nothing -> accuracy 0, precision undefined, F1 0
        (
            {"a"},
            set(),
            {"a", "b"},
            dict(accuracy=0.0, recall=0.0, precision=None, f1=0.0, specificity=1.0, balanced_accuracy=0.5),
        ),
        # both empty
        (
            set(),
            set(),
            {"a", "b"},
            dict(accuracy=None, precision=None, f1=None, specificity=1.0, balanced_accuracy=None),
        ),
        # everything degraded: no negatives -> specificity undefined
        (
            {"a", "b"},
            {"a"},
            {"a", "b"},
            dict(accuracy=0.5, precision=1.0, f1=2 / 3, specificity=None, balanced_accuracy=None),
        ),
    ],
)
def test_metrics_edge_cases(T, P, U, expected):
    m = metrics(T, P, U)
    for key, value in expected.items():
        assert m[key] == (None if value is None else pytest.approx(value)), key


def test_sets_outside_the_universe_are_refused():
    with pytest.raises(ValueError, match="outside the universe"):
        metrics({"a"}, {"zzz"}, {"a", "b"})


def test_predict_ties_and_zero_scores():
    scores = pd.DataFrame(
        {"category": ["a", "b", "c", "d"], "score": [0.25, 0.25, 0.5, 0.0], "n_latents": [3, 2, 5, 0]}
    )
    assert predict(scores, 0.25) == {"a", "b", "c"}  # a tie with the threshold is predicted
    assert predict(scores, 0.0) == {"a", "b", "c"}  # no attributed latent -> never predicted
    assert predict(scores, 0.5) == {"c"}
    assert predict(scores, 0.51) == set()
    assert predict(scores, 0.25, min_latents=3) == {"a", "c"}  # two latents are an anecdote
    assert default_predict_threshold(scores, "shift") == 0.25  # mean share
    assert default_predict_threshold(scores) == pytest.approx(-np.log10(0.05 / 4))  # Bonferroni over 4


def test_threshold_curve_walks_every_distinct_score():
    scores = pd.DataFrame(
        {"category": ["a", "b", "c", "d"], "score": [0.25, 0.25, 0.5, 0.0], "n_latents": [1, 1, 1, 0]}
    )
    curve = threshold_curve(scores, {"c", "d"})
    assert list(curve["n_predicted"]) == [0, 1, 3]
    assert curve["threshold"].iloc[0] > 0.5 and list(curve["threshold"].iloc[1:]) == [0.5, 0.25]
    assert list(curve["accuracy"]) == [0.0, 0.5, 0.5]
    assert curve["precision"].iloc[0] is None or np.isnan(curve["precision"].iloc[0])
    assert list(curve["precision"].iloc[1:]) == [1.0, pytest.approx(1 / 3)]


# --------------------------------------------------------------------------- degraded set


def test_degraded_threshold_tie_and_direction():
    bench = pd.DataFrame(
        {
            "category": ["tie", "over", "up"],
            "score_before": [0.55, 0.55, 0.10],
            "score_after": [0.50, 0.49, 0.30],
            "n_questions": [10_000] * 3,
        }
    )
    drop = degraded_table(bench, threshold=0.05, alpha=1.0)
    assert degraded_set(drop) == {"over"}  # a drop equal to the threshold is not beyond it
    rise = degraded_table(bench, direction="rise", threshold=0.05, alpha=0.05)
    assert degraded_set(rise) == {"up"}
    assert rise.set_index("category").loc["up", "drop"] == pytest.approx(0.20)


def test_paper_appendix_c_gives_T_and_metrics(appendix_c):
    table = degraded_table(appendix_c)  # defaults: drop > 0.05, one-sided z-test at 5%
    assert degraded_set(table) == T_LLAMA
    row = table.set_index("category")
    assert row.loc["college_chemistry", "p_value"] == pytest.approx(0.19500, abs=1e-4)  # z = 0.06 / sqrt(.42*.58*.02)
    assert row.loc["professional_medicine", "drop"] == pytest.approx(0.4889)
    assert row.loc["college_chemistry", "ci_low"] < 0 < row.loc["college_chemistry", "ci_high"]
    # with the significance test off, the threshold alone keeps the paper's whole top 10
    assert degraded_set(degraded_table(appendix_c, alpha=1.0)) == set(PAPER_TOP10)
    # bootstrap agrees on this data
    assert degraded_set(degraded_table(appendix_c, test="bootstrap", bootstrap_draws=4000)) == T_LLAMA
    m = metrics(T_LLAMA, P_GIVEN, appendix_c["category"])
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (4, 2, 4, 6)
    assert m["accuracy"] == 0.5 and m["precision"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(8 / 14) and m["balanced_accuracy"] == pytest.approx((4 / 8 + 6 / 8) / 2)


def test_mcnemar_on_paired_counts():
    bench = pd.DataFrame(
        {
            "category": ["x"],
            "score_before": [0.60],
            "score_after": [0.52],
            "n_questions": [100],
            "n_lost": [10],
            "n_gained": [2],
        }
    )
    row = degraded_table(bench).iloc[0]  # auto -> mcnemar, as paired counts exist
    assert row.test == "mcnemar"
    assert row.p_value == pytest.approx(79 / 4096)  # P(X >= 10), X ~ Bin(12, 1/2)
    assert bool(row.degraded)
    assert degraded_table(bench, test="ztest").iloc[0].p_value > 0.1  # unpaired test misses it


def test_random_baseline_mean_accuracy_is_one_half(appendix_c):
    universe = appendix_c["category"]
    r = random_baseline(T_LLAMA, universe, draws=2000, seed=1)
    # accuracy per draw ~ Bin(8, 0.5) / 8 (sd 0.177); SE of the mean over 2000 draws 0.004
    assert abs(r["accuracy"]["mean"] - 0.5) < 0.02
    assert r["accuracy"]["low"] <= 0.25 and r["accuracy"]["high"] >= 0.75
    assert abs(r["precision"]["mean"] - 0.5) < 0.03  # |T| / |U| = 8 / 16
    assert abs(r["mean_set_size"] - 8) < 0.3
    assert random_baseline(T_LLAMA, universe, draws=2000, seed=1) == r  # seeded
    assert random_baseline(T_LLAMA, universe, draws=2000, seed=2) != r
    empty = random_baseline(set(), universe, draws=100)
    assert empty["accuracy"] == {"mean": None, "low": None, "high": None, "n_defined": 0}


def test_naive_baseline_is_semantic_sized_and_breaks_ties_by_name(appendix_c, embedder):
    universe = appendix_c["category"].tolist()
    picked = naive_baseline("unlearned hazardous biology knowledge", universe, 3, embedder)
    assert len(picked) == 3 and picked[0] == "college_biology"
    assert naive_baseline("anything", universe, 0, embedder) == []
    # two names that embed identically: the tie goes to the first by name
    tied = naive_baseline("college medicine", ["college_medicine", "college-medicine", "marketing"], 1, embedder)
    assert tied == ["college-medicine"]


# --------------------------------------------------------------------------- predicted set


def _latents() -> pd.DataFrame:
    """Suppressed latents in categories named like some Appendix C subjects, plus noise:
    amplified latents (wrong direction) and an uncategorised one."""
    rows = []
    plan = {
        "professional medicine": [3.0, 2.0, 1.0],
        "virology": [2.0, 2.0],
        "college medicine": [2.5],
        "nutrition": [1.5, 1.0],
        "college biology": [2.0],
        "astronomy": [1.2],
        "marketing": [0.3],
    }
    i = 0
    for cat, shifts in plan.items():
        for s in shifts:
            rows.append({"latent": i, "attribution": "suppressed", "shift": -s, "category": cat})
            i += 1
    rows.append({"latent": i, "attribution": "amplified", "shift": 5.0, "category": "marketing"})
    rows.append({"latent": i + 1, "attribution": "suppressed", "shift": -4.0, "category": None})
    rows.append({"latent": i + 2, "attribution": "unchanged", "shift": 0.1, "category": "virology"})
    return pd.DataFrame(rows)


def test_category_scores_aggregate_attributed_latents(appendix_c):
    universe = appendix_c["category"].tolist()
    mapping = {c: c.replace(" ", "_") for c in _latents()["category"].dropna()}
    scores = category_scores(_latents(), mapping, universe, score="shift").set_index("category")
    total = 3 + 2 + 1 + 2 + 2 + 2.5 + 1.5 + 1 + 2 + 1.2 + 0.3  # suppressed, categorised latents only
    assert scores.loc["professional_medicine", "n_latents"] == 3
    assert scores.loc["professional_medicine", "total_shift"] == pytest.approx(6.0)
    assert scores.loc["professional_medicine", "score"] == pytest.approx(6.0 / total)
    assert scores.loc["professional_medicine", "latents"] == [0, 1, 2]  # largest |shift| first
    assert scores.loc["marketing", "n_latents"] == 1  # the amplified latent is not counted
    assert scores.loc["professional_law", "n_latents"] == 0
    assert scores["score"].sum() == pytest.approx(1.0)
    # the default threshold 1/16 keeps exactly the six heavy categories
    assert predict(scores.reset_index(), default_predict_threshold(scores, "shift")) == P_GIVEN
    # amplified direction: only marketing carries latents
    amp = category_scores(_latents(), mapping, universe, latent_direction="amplified", score="shift")
    assert predict(amp, default_predict_threshold(amp, "shift")) == {"marketing"}
    counts = category_scores(_latents(), mapping, universe, score="count").set_index("category")
    assert counts.loc["virology", "score"] == pytest.approx(2 / 11)


def test_enrichment_p_value_equals_the_hypergeometric_sum_and_ignores_base_rates():
    """A category holding many latents of every kind is not predicted for its size; one
    whose share of the attributed latents exceeds its share of the pool is, and its
    p-value is the exact tail sum  Σ_{x ≥ n} C(K, x) C(N−K, m−x) / C(N, m)."""
    from math import comb

    rows = []
    plan = {"big": (40, 4), "focused": (10, 6), "other": (10, 0)}  # (eligible latents, of them suppressed)
    i = 0
    for cat, (n_pool, n_sup) in plan.items():
        for j in range(n_pool):
            rows.append(
                {
                    "latent": i,
                    "category": cat,
                    "shift": -1.0 if j < n_sup else 0.0,
                    "attribution": "suppressed" if j < n_sup else "unchanged",
                    "beta_state": "present",
                }
            )
            i += 1
    rows.append(
        {"latent": i, "category": "big", "shift": np.nan, "attribution": "unchanged", "beta_state": "too_few_fires"}
    )  # outside the pool
    latents = pd.DataFrame(rows)
    scores = category_scores(latents, {c: c for c in plan}, list(plan)).set_index("category")
    N, m = 60, 10
    for cat, (K, n) in plan.items():
        tail = sum(comb(K, x) * comb(N - K, m - x) for x in range(n, min(K, m) + 1)) / comb(N, m) if n else 1.0
        assert scores.loc[cat, "enrichment_p"] == pytest.approx(tail, rel=1e-9)
        assert scores.loc[cat, "n_pool"] == K and scores.loc[cat, "expected"] == pytest.approx(m * K / N)
    assert predict(scores.reset_index(), default_predict_threshold(scores), 3) == {"focused"}


def _diffuse(seed: int, spread: float) -> pd.DataFrame:
    """Three categories of 60 eligible latents, none attributed; ``diffuse``'s shifts are
    larger by ``spread`` (a change spread thinly over a category), the rest noise."""
    rng = np.random.default_rng(seed)
    cats = np.repeat(["diffuse", "plain", "other"], 60)
    shift = rng.normal(0.0, 0.1, len(cats)) + np.where(cats == "diffuse", spread, 0.0)
    return pd.DataFrame(
        {
            "latent": np.arange(len(cats)),
            "category": cats,
            "shift": shift,
            "attribution": "unchanged",
            "beta_state": "present",
        }
    )


def test_rank_score_equals_mann_whitney_and_finds_a_change_no_latent_carries_alone():
    """The rank score is −log10 of the one-sided Mann–Whitney p of the category's |shift|
    against the rest of the pool (brute force: scipy on the same split); it predicts a
    category whose latents all moved a little (none attributed), at the default
    threshold and minimum; a latent under the evidence floor is left out; one absent in
    the fine-tuned model ranks as the largest move only if the attribution labelled it."""
    from scipy import stats as sps

    latents = _diffuse(0, 0.15)
    latents.loc[len(latents)] = {"latent": 999, "category": "plain", "shift": 50.0, "attribution": "unchanged",
                                 "beta_state": "too_few_fires"}  # fmt: skip
    mapping = {c: c for c in ("diffuse", "plain", "other")}
    scores = category_scores(latents, mapping, list(mapping), latent_direction="both", score="rank")
    scores = scores.set_index("category")
    pool = latents[latents["beta_state"] == "present"]
    for cat in mapping:
        inside = pool["category"] == cat
        p = sps.mannwhitneyu(pool.loc[inside, "shift"].abs(), pool.loc[~inside, "shift"].abs(), alternative="greater")
        assert scores.loc[cat, "rank_p"] == pytest.approx(p.pvalue, rel=1e-12)
        assert scores.loc[cat, "score"] == pytest.approx(-np.log10(p.pvalue), rel=1e-12)
        assert scores.loc[cat, "support"] == 60 and scores.loc[cat, "n_latents"] == 0
        assert scores.loc[cat, "latents"] == []  # the attributed latents, whatever the score
    assert 999 not in scores.loc["plain", "ranked_latents"]
    assert predict(scores.reset_index(), default_predict_threshold(scores, "rank"), 2) == {"diffuse"}
    top = pool.loc[pool["category"] == "diffuse"].assign(a=lambda d: d["shift"].abs()).sort_values("a")
    assert scores.loc["diffuse", "ranked_latents"][0] == int(top["latent"].iloc[-1])

    # absent in the fine-tuned model: the largest move for suppressed and both, the smallest for amplified
    gone = latents.assign(shift=0.01, beta_state="present")
    gone.loc[gone["latent"] == 5, ["shift", "beta_state", "attribution"]] = [np.nan, "absent_ft", "suppressed"]

    def moved(direction: str, table: pd.DataFrame = gone) -> list[int]:
        s = category_scores(table, mapping, list(mapping), latent_direction=direction, score="rank")
        return s.set_index("category").loc["diffuse", "ranked_latents"]

    assert moved("suppressed") == [5] and moved("both")[0] == 5 and 5 not in moved("amplified")
    faint = gone.assign(attribution="unchanged")  # β ≤ 0 by noise, not labelled: no extreme rank
    assert 5 not in moved("both", faint)


@pytest.mark.parametrize("direction, sign", [("suppressed", -1.0), ("amplified", 1.0)])
def test_rank_score_reads_the_sign_of_the_shift_in_one_direction(direction, sign):
    """Suppressed ranks −shift, amplified +shift: a category whose latents all went down
    is predicted when reading suppressed latents and not when reading amplified ones, with
    scipy's Mann–Whitney on the signed values as the brute force."""
    from scipy import stats as sps

    down = _diffuse(1, 0.0)
    down.loc[down["category"] == "diffuse", "shift"] -= 0.15
    mapping = {c: c for c in ("diffuse", "plain", "other")}
    scores = category_scores(down, mapping, list(mapping), latent_direction=direction, score="rank")
    scores = scores.set_index("category")
    inside = down["category"] == "diffuse"
    p = sps.mannwhitneyu(sign * down.loc[inside, "shift"], sign * down.loc[~inside, "shift"], alternative="greater")
    assert scores.loc["diffuse", "rank_p"] == pytest.approx(p.pvalue, rel=1e-12)
    predicted = predict(scores.reset_index(), default_predict_threshold(scores, "rank"), 2)
    # (read as amplified, the other two now sit above the rest: the test is relative to the pool)
    assert ("diffuse" in predicted) == (direction == "suppressed")


def test_rank_score_predicts_nothing_between_identical_or_equally_noisy_models():
    """The null: every shift 0 (identical models) gives p = 1 everywhere; where shifts are
    noise alike in every category, the default (Bonferroni) threshold predicts anything in
    about its level's share of draws (5% of 200 = 10; Binomial(200, 0.05) exceeds 18 with
    probability 0.6%, while no correction for the three categories would give ≈ 28)."""
    mapping = {c: c for c in ("diffuse", "plain", "other")}
    same = _diffuse(0, 0.0).assign(shift=0.0)
    s = category_scores(same, mapping, list(mapping), latent_direction="both", score="rank")
    assert (s["rank_p"] == 1.0).all() and predict(s, default_predict_threshold(s, "rank"), 2) == set()
    alarms = 0
    for seed in range(200):
        s = category_scores(_diffuse(seed, 0.0), mapping, list(mapping), latent_direction="both", score="rank")
        alarms += bool(predict(s, default_predict_threshold(s, "rank"), 2))
    assert alarms <= 18


def test_categories_map_to_subjects_by_embedding(appendix_c, embedder):
    names = ["viruses and infections", "stars and planets", "genes and heredity", "elderly people"]
    mapping = category_mapping(names, appendix_c["category"], embedder).set_index("mneme_category")
    assert mapping["benchmark_category"].to_dict() == {
        "viruses and infections": "virology",
        "stars and planets": "astronomy",
        "genes and heredity": "medical_genetics",
        "elderly people": "human_aging",
    }
    assert (mapping["similarity"] > 0.3).all()
    # through evaluate(): the record carries the mapping, and no name is a benchmark name
    latents = pd.DataFrame({"latent": range(4), "attribution": "suppressed", "shift": -1.0, "category": names})
    cfg = _cfg(Path("unused"), predict_score="shift", predict_min_latents=1).evaluation
    _, record = evaluate(appendix_c, latents, cfg, embedder=embedder)
    assert {m["mneme_category"]: m["benchmark_category"] for m in record["mapping"]} == mapping[
        "benchmark_category"
    ].to_dict()
    assert record["shared_names"] == []
    assert set(record["P"]) == {"virology", "astronomy", "medical_genetics", "human_aging"}  # 1/4 each >= 1/16


def test_missing_columns_name_the_stage(appendix_c):
    cfg = load_config({"models": {"base": {"path": "a"}, "ft": {"path": "b"}}, "corpus": {"files": ["x"]}}).evaluation
    with pytest.raises(EvaluationError, match="categories stage"):
        evaluate(appendix_c, _latents().drop(columns="category"), cfg, mapping=pd.DataFrame())


# --------------------------------------------------------------------------- the stage


def _cfg(tmp_path: Path, **evaluation):
    return load_config(
        {
            "name": "t",
            "run_dir": str(tmp_path / "run"),
            "models": {"base": {"path": "a"}, "ft": {"path": "b"}},
            "corpus": {"files": ["x.txt"]},
            "evaluation": evaluation,
        }
    )


def _study(tmp_path: Path, **evaluation) -> tuple:
    cfg = _cfg(tmp_path, **evaluation)
    init_run(cfg.run_path, cfg.to_dict())
    write_parquet(cfg.run_path / "latents.parquet", _latents())
    return cfg, cfg.run_path


def test_run_stage_writes_benchmark_and_evaluation(tmp_path, appendix_c):
    # the share rule (the fixture has no unattributed pool for the default enrichment test)
    share = {"predict_score": "shift", "predict_min_latents": 1}
    cfg, run_path = _study(
        tmp_path, benchmark=str(APPENDIX_C), intervention_description="unlearned hazardous biology knowledge", **share
    )
    summary = run_stage(cfg, run_path, progress=False)
    assert summary["n_degraded"] == 8 and summary["n_predicted"] == 6
    assert summary["accuracy"] == 0.5 and summary["f1"] == pytest.approx(8 / 14)
    json.dumps(summary)

    run = open_run(run_path)
    bench = run.benchmark
    assert {
        "category",
        "score_before",
        "score_after",
        "n_questions",
        "drop",
        "ci_low",
        "ci_high",
        "p_value",
        "degraded",
    } <= set(bench.columns)
    assert set(bench.loc[bench.degraded, "category"]) == T_LLAMA
    ev = run.evaluation
    assert ev["direction"] == "drop" and ev["latent_direction"] == "suppressed"
    assert set(ev["T"]) == T_LLAMA and set(ev["P"]) == P_GIVEN  # names map onto themselves
    assert ev["thresholds"]["predict_threshold"] == pytest.approx(1 / 16)
    assert ev["metrics"]["oracle"]["accuracy"] == 1.0 and ev["metrics"]["oracle"]["precision"] == 1.0
    assert abs(ev["metrics"]["random"]["accuracy"]["mean"] - 0.5) < 0.05
    naive = ev["metrics"]["naive"]
    assert len(naive["set"]) == 6 and naive["accuracy"] == len(set(naive["set"]) & T_LLAMA) / 8
    assert ev["curve"][0]["n_predicted"] == 0 and ev["curve"][-1]["n_predicted"] == 7
    assert {m["mneme_category"]: m["benchmark_category"] for m in ev["mapping"]}[
        "professional medicine"
    ] == "professional_medicine"
    assert "professional medicine" in ev["shared_names"]  # labels equal to benchmark names are flagged
    pm = next(s for s in ev["category_scores"] if s["category"] == "professional_medicine")
    assert pm["latents"] == [0, 1, 2] and pm["predicted"] is True

    table = per_category_table(run)
    assert table["category"].iloc[0] == "professional_medicine"  # largest drop first
    assert {"degraded", "score", "predicted", "latents"} <= set(table.columns)

    # rerun with no benchmark given: the run's own benchmark.parquet is the source
    assert "skipped" in ev["metrics"]["activation_diff"]  # no activation store: said, not faked
    cfg2 = _cfg(tmp_path, intervention_description="unlearned hazardous biology knowledge", **share)
    again = run_stage(cfg2, run_path, progress=False)
    assert again == summary


def test_run_stage_with_the_rank_score_records_it_and_the_live_view_agrees(tmp_path):
    """Through the stage: ``predict_score: rank`` predicts the category whose latents all
    moved a little (none attributed), records its rule, and the page's live view at the
    run's threshold gives the same set (the minimum read from ``support``) under the
    rank test's own words."""
    from mneme_core.evaluation import sideeffects

    names = {"diffuse": "virology", "plain": "astronomy", "other": "nutrition"}  # benchmark names map to themselves
    cfg = _cfg(tmp_path, benchmark=str(APPENDIX_C), latent_direction="both", predict_score="rank")
    init_run(cfg.run_path, cfg.to_dict())
    write_parquet(cfg.run_path / "latents.parquet", _diffuse(0, 0.15).replace({"category": names}))
    run_stage(cfg, cfg.run_path, progress=False)
    run = open_run(cfg.run_path)
    record = run.evaluation
    assert record["P"] == ["virology"] and record["thresholds"]["predict_score"] == "rank"
    assert record["thresholds"]["predict_threshold_rule"].startswith("-log10(significance / n_categories)")
    table, methods = sideeffects.live_prediction(per_category_table(run), record, sideeffects.run_threshold(record))
    assert set(table.loc[table["predicted"], "category"]) == {"virology"}
    assert methods["MNEME"]["precision"] == record["metrics"]["mneme"]["precision"]
    assert "rank test" in sideeffects.score_words(record)[1]
    assert "enrichment" in sideeffects.score_words({"thresholds": {}})[1]  # a record from before the choice


def test_run_stage_without_categories_or_benchmark_fails_clearly(tmp_path):
    cfg, run_path = _study(tmp_path)
    with pytest.raises(ValueError, match="evaluation.benchmark"):
        run_stage(cfg, run_path, progress=False)
    cfg, run_path = _study(tmp_path / "b", benchmark=str(APPENDIX_C))
    write_parquet(run_path / "latents.parquet", _latents().drop(columns="category"))
    with pytest.raises(EvaluationError, match="categories stage"):
        run_stage(cfg, run_path, progress=False)


def test_evaluation_config_is_validated():
    base = {"models": {"base": {"path": "a"}, "ft": {"path": "b"}}, "corpus": {"files": ["x"]}}
    with pytest.raises(ConfigError, match="evaluation.significance"):
        load_config({**base, "evaluation": {"significance": 0}})
    with pytest.raises(ConfigError, match="evaluation.direction"):
        load_config({**base, "evaluation": {"direction": "down"}})


def test_run_stage_with_the_runner_scores_both_models(tmp_path):
    """``benchmark: runner:FILE`` loads the study's two models and scores them with our MC
    runner (resumable cache in the run); the table is what score_pair gives directly."""
    from tiny import save_tiny_pair
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mneme_core.benchmarks.mc_runner import load_mc_items, score_pair

    base_dir, ft_dir = save_tiny_pair(tmp_path / "models", n_layers=2)
    qfile = tmp_path / "questions.jsonl"
    rows = [
        ("the cat sat on the", ["mat", "sun", "sea"], 0, "animals"),
        ("a dog ran in the", ["ocean", "park", "castle"], 1, "animals"),
        ("the doctor gave the patient some", ["corn", "music", "medicine"], 2, "health"),
        ("plants need light and", ["water", "numbers", "the king"], 0, "health"),
    ]
    qfile.write_text(
        "\n".join(json.dumps({"question": q, "choices": c, "answer": a, "subject": s}) for q, c, a, s in rows)
    )
    cfg = load_config(
        {
            "name": "r",
            "run_dir": str(tmp_path / "run"),
            "models": {"base": {"path": str(base_dir)}, "ft": {"path": str(ft_dir)}, "device": "cpu"},
            "corpus": {"files": ["x.txt"]},
            "evaluation": {"benchmark": f"runner:{qfile}", "runner_batch_size": 2, "degrade_threshold": 0.0},
        }
    )
    init_run(cfg.run_path, cfg.to_dict())
    write_parquet(
        cfg.run_path / "latents.parquet",
        pd.DataFrame(
            {
                "latent": [0, 1],
                "attribution": ["suppressed"] * 2,
                "shift": [-2.0, -1.0],
                "category": ["animals", "health"],
            }
        ),
    )
    run_stage(cfg, cfg.run_path, progress=False)

    bench = open_run(cfg.run_path).benchmark
    assert set(bench["test"]) == {"mcnemar"}  # paired counts came through
    items = load_mc_items(qfile)
    tok = AutoTokenizer.from_pretrained(base_dir)
    pair = [AutoModelForCausalLM.from_pretrained(d) for d in (base_dir, ft_dir)]
    want = score_pair((pair[0], tok), (pair[1], tok), items, progress=False)
    cols = ["category", "score_before", "score_after", "n_questions", "n_lost", "n_gained"]
    pd.testing.assert_frame_equal(bench[cols], want[cols])
    assert len([p for p in (cfg.run_path / "benchmark_cache").iterdir() if p.is_dir()]) == 2  # one per model


def test_attribution_concentrated_in_one_category_is_tested_against_the_whole_pool(appendix_c, embedder):
    """Every attributed latent in one category: the enrichment test must still compare it
    with the whole eligible pool (mapping only the attributed categories left a pool of
    that category alone, p = 1, and nothing predicted)."""
    from math import comb

    cats = ["viruses and infections"] * 10 + ["stars and planets"] * 30 + ["genes and heredity"] * 20
    latents = pd.DataFrame(
        {
            "latent": range(60),
            "category": cats,
            "beta_state": "present",
            "attribution": ["suppressed"] * 6 + ["unchanged"] * 54,
            "shift": [-1.0] * 6 + [0.0] * 54,
        }
    )
    cfg = _cfg(Path("unused")).evaluation
    _, record = evaluate(appendix_c, latents, cfg, embedder=embedder)
    virology = next(s for s in record["category_scores"] if s["category"] == "virology")
    assert virology["n_latents"] == 6 and virology["n_pool"] == 10
    assert virology["enrichment_p"] == pytest.approx(comb(10, 6) / comb(60, 6), rel=1e-9)
    assert "virology" in record["P"]
    assert {m["mneme_category"] for m in record["mapping"]} == set(cats)


# --------------------------------------------------------------------------- both directions


def _two_directions(embedder, **evaluation):
    import _twodir as td

    cfg = _cfg(Path("unused"), intervention_description="fine-tuned on chemistry textbooks", **evaluation).evaluation
    return evaluate(td.BENCHMARK, td.latents(), cfg, embedder=embedder, context_diffs=td.context_diffs())


def test_improved_direction_reads_amplified_latents_against_categories_that_improved(embedder):
    import _twodir as td

    table, record = _two_directions(embedder)
    degraded, improved = record["directions"]["degraded"], record["directions"]["improved"]
    assert (degraded["direction"], degraded["latent_direction"]) == ("drop", "suppressed")
    assert (improved["direction"], improved["latent_direction"]) == ("rise", "amplified")
    assert degraded["T"] == td.T_DEGRADED and degraded["P"] == td.P_SUPPRESSED
    # music rose by 0.03 (under the threshold), poetry by 0.08 on 40 questions (not significant)
    assert improved["T"] == td.T_IMPROVED and improved["P"] == td.P_AMPLIFIED
    universe = record["universe"]
    assert universe == td.CATEGORIES
    m = improved["metrics"]
    assert (m["mneme"]["tp"], m["mneme"]["fp"], m["mneme"]["fn"], m["mneme"]["tn"]) == (1, 1, 1, 3)
    assert m["mneme"]["accuracy"] == 0.5 and m["mneme"]["precision"] == 0.5 and m["mneme"]["f1"] == 0.5
    assert m["mneme"]["specificity"] == 0.75 and m["mneme"]["set"] == td.P_AMPLIFIED
    assert m["oracle"]["set"] == td.T_IMPROVED and m["oracle"]["accuracy"] == 1.0
    assert m["random"] == random_baseline(set(td.T_IMPROVED), universe, draws=1000, seed=0)  # the default draws
    assert len(m["naive"]["set"]) == 2  # sized to this direction's |P|
    assert m["naive"]["accuracy"] == metrics(td.T_IMPROVED, m["naive"]["set"], universe)["accuracy"]
    assert degraded["metrics"]["mneme"]["accuracy"] == 1.0 and degraded["metrics"]["mneme"]["precision"] == 1.0
    # the dictionary-free baseline: one prediction, scored against each direction's own T
    ad_deg, ad_imp = degraded["metrics"]["activation_diff"], m["activation_diff"]
    assert ad_deg["set"] == ad_imp["set"] == td.P_ACTIVATION_DIFF
    assert ad_deg["per_category"] == ad_imp["per_category"]
    assert ad_deg["accuracy"] == 0.0 and ad_imp["accuracy"] == 0.5 and ad_imp["precision"] == 1.0
    assert "no direction" in improved["activation_diff_note"]
    # per direction: the rule and the threshold, and the scores behind P
    assert improved["thresholds"]["predict_threshold"] == pytest.approx(-np.log10(0.05 / 6))
    assert "Bonferroni" in improved["thresholds"]["predict_threshold_rule"]
    scores = {s["category"]: s for s in improved["category_scores"]}
    assert scores["chemistry"]["n_latents"] == 7 and scores["chemistry"]["predicted"] is True
    assert scores["physics"]["n_latents"] == 1 and scores["physics"]["predicted"] is False
    assert {s["category"]: s["n_latents"] for s in degraded["category_scores"]}["chemistry"] == 0
    assert improved["curve"][0]["n_predicted"] == 0
    # the table: the improved direction's columns are the same test in the opposite sense
    row = table.set_index("category")
    assert (row["gain"] == -row["drop"]).all()
    assert set(row.index[row["improved"]]) == set(td.T_IMPROVED) and set(row.index[row["degraded"]]) == {"history"}
    assert row.loc["chemistry", "gain_p_value"] < 1e-10 and row.loc["chemistry", "p_value"] == pytest.approx(1.0)
    assert row.loc["chemistry", "gain_ci_low"] == pytest.approx(-row.loc["chemistry", "ci_high"])
    json.dumps(record)  # JSON-able, both directions


def test_degraded_direction_is_the_top_level_record_and_unchanged(embedder):
    """The top-level keys are the degraded direction, computed as before there was a second one."""
    import _twodir as td

    from mneme_core.evaluation.evaluate import DIRECTION_KEYS, threshold_curve

    _, record = _two_directions(embedder)
    degraded = record["directions"]["degraded"]
    assert set(DIRECTION_KEYS) <= set(degraded)
    for key in DIRECTION_KEYS:
        assert degraded[key] == record[key], key
    # what the one-direction evaluation computed, step by step with the same functions
    cfg = _cfg(Path("unused")).evaluation
    T = degraded_set(degraded_table(td.BENCHMARK))
    mapping = {c: c for c in td.CATEGORIES}
    scores = category_scores(td.latents(), mapping, td.CATEGORIES)
    P = predict(scores, default_predict_threshold(scores), cfg.predict_min_latents)
    assert record["T"] == sorted(T) and record["P"] == sorted(P)
    assert record["metrics"]["mneme"] == {**metrics(T, P, td.CATEGORIES), "set": sorted(P)}
    curve = threshold_curve(scores, T, td.CATEGORIES, cfg.predict_min_latents)
    pd.testing.assert_frame_equal(pd.DataFrame(record["curve"]).astype(curve.dtypes.to_dict()), curve)
    assert record["latent_direction"] == "suppressed" and record["direction"] == "drop"
    # the improved direction's latents never change the degraded one
    for other in ("suppressed", "both"):
        _, again = _two_directions(embedder, improved_latent_direction=other)
        assert again["directions"]["degraded"] == degraded
        assert {k: again[k] for k in DIRECTION_KEYS} == {k: record[k] for k in DIRECTION_KEYS}


def test_improved_latent_direction_is_respected_and_validated(embedder):
    import _twodir as td

    _, sup = _two_directions(embedder, improved_latent_direction="suppressed")
    improved = sup["directions"]["improved"]
    assert improved["latent_direction"] == "suppressed"
    assert improved["T"] == td.T_IMPROVED and improved["P"] == ["history"]  # degraded, not improved: a miss
    assert improved["metrics"]["mneme"]["tp"] == 0 and improved["metrics"]["mneme"]["precision"] == 0.0
    _, both = _two_directions(embedder, improved_latent_direction="both")
    assert both["directions"]["improved"]["P"] == []  # 22 latents drawn: no category enriched enough
    assert both["directions"]["improved"]["metrics"]["mneme"]["precision"] is None
    with pytest.raises(ConfigError, match="evaluation.improved_latent_direction"):
        _cfg(Path("unused"), improved_latent_direction="sideways")


def test_per_category_table_and_live_view_per_direction(tmp_path):
    import _twodir as td

    from mneme_core.evaluation import sideeffects
    from mneme_core.evaluation.evaluate import DirectionUnavailable

    run = open_run(td.build_run(tmp_path / "run", intervention_description="fine-tuned on chemistry"))
    record = run.evaluation
    improved = per_category_table(run, "improved")
    assert improved["category"].tolist()[:2] == ["chemistry", "physics"]  # largest gain first
    assert set(improved.loc[improved["improved"], "category"]) == set(td.T_IMPROVED)
    assert improved.set_index("category").loc["music", "n_latents"] == 7
    degraded = per_category_table(run)
    assert degraded["category"].iloc[0] == "history" and degraded.set_index("category").loc["music", "n_latents"] == 0
    thr = sideeffects.run_threshold(record, "improved")
    table, methods = sideeffects.live_prediction(improved, record, thr, "improved")
    assert set(table.loc[table["predicted"], "category"]) == set(td.P_AMPLIFIED)
    assert methods["MNEME"]["accuracy"] == 0.5 and methods["oracle"]["accuracy"] == 1.0
    assert methods[sideeffects.DICTIONARY_FREE]["precision"] == 1.0
    _, deg_methods = sideeffects.live_prediction(degraded, record, sideeffects.run_threshold(record), "degraded")
    assert deg_methods["MNEME"]["accuracy"] == 1.0 and deg_methods[sideeffects.DICTIONARY_FREE]["accuracy"] == 0.0
    assert sideeffects.headline(record, "improved")["improved categories"] == 2
    assert sideeffects.headline(record)["degraded categories"] == 1
    assert sideeffects.unavailable(record, "improved") is None
    cfg = td.study_config(run.path, tmp_path / "run-benchmark.csv", intervention_description="fine-tuned on chemistry")
    summary = run_stage(cfg, run.path, progress=False)
    assert (summary["n_improved"], summary["n_predicted_improved"], summary["accuracy_improved"]) == (2, 2, 0.5)
    assert (summary["n_degraded"], summary["n_predicted"], summary["accuracy"]) == (1, 1, 1.0)
    # the static report shows the improved direction's T, P and metrics
    from mneme_core.views.report import build_report

    no_marks = pd.DataFrame(columns=["latent", "mark", "note"])
    text = build_report(run, no_marks)
    section = text[text.index("<h2>Improved ← amplified latents</h2>") :]
    section = section[: section.index("<h2>", 4)]
    assert "Truly improved T (gain &gt; 0.05, p &lt; 0.05): chemistry, physics." in section
    assert "Predicted P (amplified latents, threshold 2.079): chemistry, music." in section
    assert "<td>MNEME</td>" in section and "<td>0.5</td>" in section
    # a run evaluated before there were two directions: degraded as before, improved says what to run
    old = {k: v for k, v in record.items() if k != "directions"}
    (run.path / "evaluation.json").write_text(json.dumps(old))
    run = open_run(run.path)
    pd.testing.assert_frame_equal(per_category_table(run), degraded)
    with pytest.raises(DirectionUnavailable, match="mneme evaluate"):
        per_category_table(run, "improved")
    note = sideeffects.unavailable(run.evaluation, "improved", run.path)
    assert note and f"mneme evaluate {run.path}" in note
    assert sideeffects.headline(run.evaluation, "improved") == {"note": sideeffects.unavailable(old, "improved")}
    assert sideeffects.headline(run.evaluation) == sideeffects.headline(record)
    assert "Improved ←" not in build_report(run, no_marks)


def _confounded_diffs(names: tuple[str, str, str, str], seed: int) -> pd.DataFrame:
    """Per-context changes of four categories: a large one a few percent above two large
    unmoved ones (significant, small), and a small one that moved twice as much."""
    large, calm1, calm2, moved = names
    level = {large: 0.058, calm1: 0.050, calm2: 0.050, moved: 0.110}
    sizes = {large: 300, calm1: 300, calm2: 300, moved: 25}
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "category": np.concatenate([[c] * n for c, n in sizes.items()]),
            "rel_diff": np.concatenate([rng.normal(level[c], 0.008, n) for c, n in sizes.items()]),
        }
    )


def test_baseline_floor_stops_a_large_category_with_a_small_consistent_excess():
    """The dictionary-free baseline's test alone names a large category that moved only a
    few percent more than the rest (the confound of development scenario 7); the default
    effect floor keeps the category that moved far more, and the ratio is the plain mean
    over the other contexts' mean."""
    from mneme_core.analysis.actdiff import predict_from_diffs

    diffs = _confounded_diffs(("plants", "religion", "history", "chemistry"), seed=0)
    names = sorted(set(diffs["category"]))
    mapping = {c: c for c in names}
    cfg = EvaluationConfig()
    table, P = predict_from_diffs(
        diffs,
        mapping,
        names,
        alpha=cfg.significance,
        min_contexts=cfg.predict_min_latents,
        min_ratio=cfg.baseline_min_ratio,
    )
    rows = table.set_index("category")
    assert rows.loc["plants", "p_value"] < cfg.significance / len(names)  # significant ...
    assert rows.loc["plants", "ratio"] < cfg.baseline_min_ratio  # ... but a small excess
    assert P == {"chemistry"}
    inside = diffs["category"] == "chemistry"
    brute = diffs.loc[inside, "rel_diff"].mean() / diffs.loc[~inside, "rel_diff"].mean()
    assert rows.loc["chemistry", "ratio"] == pytest.approx(brute, rel=1e-12)
    # without the floor the test alone names the large category too
    _, P_rank = predict_from_diffs(
        diffs, mapping, names, alpha=cfg.significance, min_contexts=cfg.predict_min_latents, min_ratio=0.0
    )
    assert P_rank == {"chemistry", "plants"}
    # identical models: nothing moved, no ratio, no prediction
    still, P_null = predict_from_diffs(diffs.assign(rel_diff=0.0), mapping, names, min_ratio=cfg.baseline_min_ratio)
    assert P_null == set() and still["ratio"].isna().all()


def test_baseline_floor_below_zero_is_refused_before_any_work():
    for bad in (-1.0, float("inf"), float("nan")):  # inf would silently predict nothing
        with pytest.raises(ConfigError, match="baseline_min_ratio must be a finite number >= 0"):
            EvaluationConfig(baseline_min_ratio=bad).validate("evaluation")


def test_baseline_floor_keeps_the_only_category_that_moved_when_the_rest_did_not():
    """Nothing else moved: no ratio can be formed, but the moved category is the plainest
    prediction there is and the floor must not drop it."""
    from mneme_core.analysis.actdiff import predict_from_diffs

    diffs = pd.DataFrame({"category": ["a"] * 8 + ["b"] * 60, "rel_diff": [0.3] * 8 + [0.0] * 60})
    table, P = predict_from_diffs(
        diffs, {"a": "a", "b": "b"}, ["a", "b"], min_ratio=EvaluationConfig().baseline_min_ratio
    )
    assert P == {"a"} and np.isnan(table.set_index("category").loc["a", "ratio"])


def test_evaluate_applies_the_configured_baseline_floor(embedder):
    """Through ``evaluate``: a large category with a small consistent excess is in the
    baseline's set with the floor off and out of it at the default; the record names the
    floor in its rule."""
    import _twodir as td

    diffs = _confounded_diffs(("history", "law", "poetry", "chemistry"), seed=1)
    sets = {}
    for ratio in (0.0, EvaluationConfig().baseline_min_ratio):
        cfg = _cfg(Path("unused"), baseline_min_ratio=ratio).evaluation
        _, record = evaluate(td.BENCHMARK, td.latents(), cfg, embedder=embedder, context_diffs=diffs)
        baseline = record["metrics"]["activation_diff"]
        sets[ratio] = baseline["set"]
        assert baseline["min_ratio"] == ratio and ("mean change >=" in baseline["rule"]) == (ratio > 0)
    assert sets == {0.0: ["chemistry", "history"], EvaluationConfig().baseline_min_ratio: ["chemistry"]}


def test_page_table_takes_the_baselines_figures_from_new_and_old_records():
    from mneme_core.evaluation import sideeffects

    table = pd.DataFrame({"category": ["a", "b"], "drop": [0.1, 0.0]})
    new = {
        "per_category": [
            {"category": "a", "p_value": 1e-5, "ratio": None},
            {"category": "b", "p_value": 1.0, "ratio": None},
        ]
    }
    shown = sideeffects.with_baseline(table, new)
    assert shown["baseline_ratio"].dtype == np.float64 and shown["baseline_ratio"].isna().all()
    assert shown["baseline_p"].tolist() == [1e-5, 1.0]
    old = {"per_category": [{"category": "a", "p_value": 1e-5}]}  # before the floor: no ratio
    shown = sideeffects.with_baseline(table, old)
    assert (
        "baseline_ratio" not in shown and shown["baseline_p"].iloc[0] == 1e-5 and np.isnan(shown["baseline_p"].iloc[1])
    )
    assert sideeffects.with_baseline(table, {}).equals(table)


def _two_way_record(degraded: str, improved: str, P_degraded: list[str], P_improved: list[str]) -> dict:
    """A minimal two-direction record: what the page's words read (latent directions and P's)."""
    sub = {"degraded": (degraded, P_degraded), "improved": (improved, P_improved)}
    directions = {d: {"latent_direction": ld, "P": P, "T": [], "metrics": {}} for d, (ld, P) in sub.items()}
    return {"latent_direction": degraded, "P": P_degraded, "T": [], "directions": directions}


@pytest.mark.parametrize(
    ("degraded", "improved", "label", "reason"),
    [
        ("both", "amplified", "Degraded ← suppressed and amplified latents", "holding many amplified latents"),
        ("suppressed", "amplified", "Degraded ← suppressed latents", "holding many suppressed and amplified"),
    ],
)
def test_page_words_follow_the_records_latent_direction(degraded, improved, label, reason):
    from mneme_core.evaluation import sideeffects

    record = _two_way_record(degraded, improved, ["plants", "animals"], ["plants", "music"])
    assert sideeffects.direction_label(record, "degraded") == label
    assert sideeffects.in_both_directions(record) == ["plants"]
    note = sideeffects.both_directions_note(record)
    assert note is not None and note.startswith("**plants** is predicted both degraded and improved")
    assert f"degraded is predicted from {sideeffects.latent_words(record, 'degraded')} latents" in note
    assert reason in note
    assert sideeffects.both_directions_note(_two_way_record(degraded, improved, ["animals"], ["music"])) is None
    old = {"latent_direction": degraded, "P": ["plants"], "T": []}  # evaluated before there were two directions
    assert sideeffects.in_both_directions(old) == [] and sideeffects.both_directions_note(old) is None
    assert sideeffects.direction_label({}, "degraded") == f"Degraded ← {EvaluationConfig().latent_direction} latents"


def test_null_control_verdict_fails_on_a_prediction_or_on_many_attributed_latents():
    from mneme_core.evaluation import sideeffects

    quiet = pd.DataFrame({"attribution": ["unchanged"] * 199 + ["amplified"]})  # 0.5%: the test's own noise
    passed, text = sideeffects.null_control_verdict(_two_way_record("both", "amplified", [], []), quiet)
    assert passed and "P = ∅ in both directions and 1 of 200 latents are attributed" in text
    passed, text = sideeffects.null_control_verdict(_two_way_record("both", "amplified", ["plants"], []), quiet)
    assert not passed and text.startswith("**Null control failed**") and "degraded: {plants}; improved: ∅" in text
    noisy = pd.DataFrame({"attribution": ["unchanged"] * 190 + ["suppressed"] * 10})  # 5%
    passed, text = sideeffects.null_control_verdict(_two_way_record("both", "amplified", [], []), noisy)
    assert not passed and "10 of 200 latents" in text


def test_delta_vs_random_is_level_when_it_rounds_to_zero():
    from mneme_core.evaluation import sideeffects

    assert sideeffects.delta_vs_random(0.5, 0.5004) == ("0.000 vs random", True)
    assert sideeffects.delta_vs_random(0.5, 0.517) == ("-0.017 vs random", False)
    assert sideeffects.delta_vs_random(None, 0.5) == (None, True)


def test_chart_gaps_name_the_charts_that_would_be_blank():
    from mneme_core.evaluation import sideeffects

    still = pd.DataFrame({"category": ["a", "b"], "drop": [0.0, 0.0], "gain": [0.0, float("nan")]})
    one_point = [{"threshold": 0.0, "accuracy": None}]
    gaps = sideeffects.chart_gaps(still, "improved", one_point)
    assert set(gaps) == {"bars", "curve"} and "every gain is 0" in gaps["bars"]
    moved = still.assign(drop=[0.1, 0.0])
    assert sideeffects.chart_gaps(moved, "degraded", one_point + [{"threshold": 1.0, "accuracy": 1.0}]) == {}


def test_metrics_frame_keeps_numbers_and_leaves_undefined_as_nan():
    from mneme_core.evaluation import sideeffects

    frame = sideeffects.metrics_frame({"MNEME": {"accuracy": None, "precision": 0.0}, "oracle": {"accuracy": 1.0}})
    assert (frame.dtypes == np.float64).all() and list(frame.columns) == list(sideeffects.SHOWN_METRICS)
    assert np.isnan(frame.loc["MNEME", "accuracy"]) and frame.loc["oracle", "accuracy"] == 1.0


@pytest.mark.parametrize("own, top", [(2.699, 52.8), (0.3, 0.31), (1.3, 100.0), (0.0, 4.0), (5.0, 0.0)])
def test_threshold_slider_steps_land_on_the_runs_own_threshold(own, top):
    from mneme_core.evaluation.sideeffects import threshold_step

    step = threshold_step(own, top)
    assert step > 0
    if own > 0 and top > 0:
        assert own / step == pytest.approx(round(own / step), abs=1e-9)  # the run's threshold is on the grid
        assert 0.5 * top / 200 <= step <= 2 * top / 200 or own / step == 1  # about 200 positions
