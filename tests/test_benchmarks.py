"""Benchmark results in: user tables, lm-evaluation-harness results, and our MC runner
on a real tiny Llama model checked against a direct per-question computation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import perturbed_copy, tiny_llama, tiny_tokenizer

from mneme_core.benchmarks import (
    BenchmarkError,
    load_benchmark,
    load_benchmark_table,
    load_lm_eval_pair,
    load_lm_eval_results,
)
from mneme_core.benchmarks.mc_runner import (
    MCItem,
    encode_item,
    load_mc_items,
    run_mc_benchmark,
    score_pair,
    score_questions,
    wilson_interval,
)

# --------------------------------------------------------------------------- user tables


def test_csv_and_json_tables_read_alike(tmp_path):
    rows = [
        {"category": "virology", "score_before": 0.5181, "score_after": 0.2831, "n_questions": 166},
        {"category": "anatomy", "score_before": 0.6, "score_after": 0.61, "n_questions": 135},
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "b.csv", index=False)
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "wrapped.json").write_text(json.dumps({"categories": rows}))
    tables = [load_benchmark_table(tmp_path / f) for f in ("b.csv", "list.json", "wrapped.json")]
    for t in tables:
        assert list(t["category"]) == ["anatomy", "virology"]  # sorted
        assert t["n_questions"].dtype == np.int64
        assert t.loc[t.category == "virology", "score_after"].item() == pytest.approx(0.2831)
    table, source = load_benchmark(str(tmp_path / "b.csv"))
    assert source.endswith("b.csv") and len(table) == 2


@pytest.mark.parametrize(
    "rows, fragment",
    [
        ([{"category": "a", "score_before": 74, "score_after": 0.5, "n_questions": 10}], "fractions"),
        ([{"category": "a", "score_before": 0.7, "score_after": 0.5}], "lacks column"),
        ([{"category": "a", "score_before": 0.7, "score_after": 0.5, "n_questions": 10}] * 2, "more than once"),
        ([{"category": "a", "score_before": 0.7, "score_after": 0.5, "n_questions": 0}], "must be > 0"),
        ([{"category": "a", "score_before": 0.7, "score_after": 0.5, "n_questions": 2.5}], "whole numbers"),
    ],
)
def test_bad_tables_are_named(tmp_path, rows, fragment):
    path = tmp_path / "b.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(BenchmarkError, match=fragment):
        load_benchmark_table(path)


def test_missing_benchmark_says_how_to_give_one(tmp_path):
    with pytest.raises(BenchmarkError, match="evaluation.benchmark"):
        load_benchmark("", tmp_path)
    with pytest.raises(BenchmarkError, match="not found"):
        load_benchmark(str(tmp_path / "nope.csv"))


# --------------------------------------------------------------------------- lm-evaluation-harness


def _lm_eval_file(path, accs: dict[str, float], counts: dict[str, int]):
    """A results file in lm-evaluation-harness 0.4's documented layout, group rows included."""
    results = {
        "mmlu": {"acc,none": 0.5, "acc_stderr,none": 0.004, "alias": "mmlu"},
        "mmlu_stem": {"acc,none": 0.45, "acc_stderr,none": 0.008, "alias": " - stem"},
    }
    for task, acc in accs.items():
        se = (acc * (1 - acc) / (counts[task] - 1)) ** 0.5
        results[task] = {"alias": "  - " + task[5:], "acc,none": acc, "acc_stderr,none": se}
    data = {
        "results": results,
        "groups": {"mmlu": results["mmlu"], "mmlu_stem": results["mmlu_stem"]},
        "group_subtasks": {"mmlu_stem": sorted(accs), "mmlu": ["mmlu_stem"]},
        "configs": {t: {"task": t, "num_fewshot": 0} for t in accs},
        "versions": {t: 1.0 for t in accs},
        "n-shot": {t: 0 for t in accs},
        "higher_is_better": {t: {"acc": True} for t in accs},
        "n-samples": {t: {"original": counts[t], "effective": counts[t]} for t in accs},
        "config": {"model": "hf", "model_args": "pretrained=x", "limit": None},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_lm_eval_pair_reads_leaf_tasks_and_counts(tmp_path):
    counts = {"mmlu_virology": 166, "mmlu_college_chemistry": 100, "mmlu_astronomy": 152}
    before = _lm_eval_file(
        tmp_path / "base" / "results_2024-01-01T00-00-00.json",
        {"mmlu_virology": 0.5181, "mmlu_college_chemistry": 0.45, "mmlu_astronomy": 0.6711},
        counts,
    )
    after = _lm_eval_file(
        tmp_path / "ft" / "results_2024-01-02T00-00-00.json",
        {"mmlu_virology": 0.2831, "mmlu_college_chemistry": 0.39, "mmlu_astronomy": 0.6579},
        counts,
    )
    table = load_lm_eval_pair(before, after)
    assert list(table["category"]) == ["astronomy", "college_chemistry", "virology"]  # no 'mmlu', no 'stem'
    row = table.set_index("category").loc["virology"]
    assert (row.score_before, row.score_after, row.n_questions) == (pytest.approx(0.5181), pytest.approx(0.2831), 166)
    # the spec string and a folder holding the results file give the same table
    same, _ = load_benchmark(f"lm_eval:{tmp_path / 'base'},{after}")
    pd.testing.assert_frame_equal(same, table)


def test_lm_eval_without_n_samples_infers_counts_from_stderr(tmp_path):
    """Harness < 0.4.2 wrote no n-samples and named tasks hendrycksTest-*; its stderr is the
    sample stderr sqrt(p(1-p)/(n-1)), which fixes n."""
    p, n = 0.5181, 166
    data = {"results": {"hendrycksTest-virology": {"acc": p, "acc_stderr": (p * (1 - p) / (n - 1)) ** 0.5}}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    df = load_lm_eval_results(path)
    assert df.loc[0, "category"] == "virology" and df.loc[0, "n_questions"] == 166


def test_lm_eval_mismatches_are_refused(tmp_path):
    a = _lm_eval_file(tmp_path / "a.json", {"mmlu_virology": 0.5}, {"mmlu_virology": 166})
    b = _lm_eval_file(tmp_path / "b.json", {"mmlu_anatomy": 0.5}, {"mmlu_anatomy": 135})
    c = _lm_eval_file(tmp_path / "c.json", {"mmlu_virology": 0.5}, {"mmlu_virology": 50})
    with pytest.raises(BenchmarkError, match="different tasks"):
        load_lm_eval_pair(a, b)
    with pytest.raises(BenchmarkError, match="same questions"):
        load_lm_eval_pair(a, c)
    with pytest.raises(BenchmarkError, match="no task with metric"):
        load_lm_eval_results(a, metric="exact_match")
    with pytest.raises(BenchmarkError, match="lm_eval:"):
        load_benchmark_table(a)


# --------------------------------------------------------------------------- MC runner

WORDS = (
    "what which is the a of color animal number cat dog fish red blue green one two three four five "
    "sky grass sea big small"
).split()
QUESTIONS = [
    {
        "question": "what color is the sky ?",
        "choices": ["blue", "red", "green", "big dog"],
        "answer": 0,
        "subject": "colors",
    },
    {
        "question": "what color is the grass ?",
        "choices": ["red", "green", "blue sea", "one"],
        "answer": 1,
        "subject": "colors",
    },
    {"question": "which color is the sea ?", "choices": ["green", "red", "blue"], "answer": 2, "subject": "colors"},
    {"question": "which is a animal ?", "choices": ["cat", "sky", "one two", "red"], "answer": 0, "subject": "animals"},
    {
        "question": "what animal is big ?",
        "choices": ["three", "a big dog", "fish", "blue"],
        "answer": 1,
        "subject": "animals",
    },
    {
        "question": "which number is small ?",
        "choices": ["one", "five four", "three"],
        "answer": 0,
        "subject": "numbers",
    },
    {
        "question": "what is two of two ?",
        "choices": ["one", "three", "four", "five"],
        "answer": 2,
        "subject": "numbers",
    },
    {
        "question": "which is a number ?",
        "choices": ["dog", "five", "sky", "the sea"],
        "answer": 1,
        "subject": "numbers",
    },
]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer([" ".join(WORDS) + " Question: Answer: ? A B C D A. B. C. D."])


@pytest.fixture(scope="module")
def tiny_pair(tokenizer):
    base = tiny_llama(tokenizer, n_layers=2, seed=0)
    return base, perturbed_copy(base, layers=(0, 1), scale=0.5)


@pytest.fixture()
def mmlu_file(tmp_path):
    path = tmp_path / "mmlu.jsonl"
    path.write_text("\n".join(json.dumps(q) for q in QUESTIONS))
    return path


@torch.no_grad()
def _direct(model, tokenizer, items, style="cloze"):
    """The definition, one option at a time: sum of log p(option token | everything before)."""
    out = []
    for it in items:
        prefix, options = encode_item(tokenizer, it, style)
        lls = []
        for opt in options:
            logp = torch.log_softmax(model(torch.tensor([prefix + opt])).logits[0].double(), -1)
            lls.append(sum(float(logp[len(prefix) - 1 + t, tok]) for t, tok in enumerate(opt)))
        out.append(lls)
    return out


def test_runner_matches_direct_per_question_computation(tokenizer, tiny_pair, mmlu_file):
    model = tiny_pair[0]
    items = load_mc_items(mmlu_file)
    assert len(items) == len(QUESTIONS) and items[0] == MCItem(
        "what color is the sky ?", ("blue", "red", "green", "big dog"), 0, "colors"
    )
    direct = _direct(model, tokenizer, items)
    acc_direct: dict[str, list[bool]] = {}
    for it, lls in zip(items, direct):
        acc_direct.setdefault(it.category, []).append(int(np.argmax(lls)) == it.answer)
    for packing in ("tree", "plain", "auto"):
        perq = score_questions(model, tokenizer, items, batch_size=3, packing=packing, progress=False)
        by_cat = {c: g.sort_values("index") for c, g in perq.groupby("category")}
        for cat in acc_direct:
            want = [d for it, d in zip(items, direct) if it.category == cat]
            for got_q, want_q in zip(by_cat[cat]["logliks"], want, strict=True):
                np.testing.assert_allclose(got_q, want_q, atol=1e-4)
    table = run_mc_benchmark(model, tokenizer, items, batch_size=3, progress=False)
    assert list(table["category"]) == ["animals", "colors", "numbers"]
    for _, row in table.iterrows():
        assert row.accuracy == pytest.approx(np.mean(acc_direct[row.category]))
        assert row.n_questions == len(acc_direct[row.category])
        assert row.ci_low <= row.accuracy <= row.ci_high


def test_letters_style_scores_one_letter_per_option(tokenizer, tiny_pair):
    item = MCItem("what color is the sky ?", ("blue", "red", "green"), 0, "colors")
    prefix, options = encode_item(tokenizer, item, "letters")
    assert options == [[tokenizer.convert_tokens_to_ids(c)] for c in "ABC"]
    got = score_questions(tiny_pair[0], tokenizer, [item], style="letters", progress=False)["logliks"][0]
    np.testing.assert_allclose(got, _direct(tiny_pair[0], tokenizer, [item], "letters")[0], atol=1e-4)


def test_runner_resumes_from_cached_categories(tokenizer, tiny_pair, mmlu_file, tmp_path):
    model = tiny_pair[0]
    items = load_mc_items(mmlu_file)
    cache = tmp_path / "cache"
    first = run_mc_benchmark(model, tokenizer, items, batch_size=4, cache_dir=cache, progress=False)
    files = sorted(cache.rglob("*.json"))
    assert len(files) == 3  # one per category, under the model's fingerprint
    # Doctor one cached category so that reusing it is visible: every question "right".
    colors = next(f for f in files if f.name.startswith("colors"))
    saved = json.loads(colors.read_text())
    saved["logliks"] = [
        [0.0 if i == it.answer else -9.0 for i in range(len(it.choices))] for it in items if it.category == "colors"
    ]
    colors.write_text(json.dumps(saved))
    again = run_mc_benchmark(model, tokenizer, items, batch_size=4, cache_dir=cache, progress=False)
    assert again.set_index("category").loc["colors", "accuracy"] == 1.0
    pd.testing.assert_frame_equal(again[again.category != "colors"], first[first.category != "colors"])
    # a different model (other weights) never reads the first model's cache
    other = run_mc_benchmark(tiny_pair[1], tokenizer, items, batch_size=4, cache_dir=cache, progress=False)
    assert len(list(cache.iterdir())) == 2
    assert other.set_index("category").loc["colors", "accuracy"] == pytest.approx(
        np.mean(
            [
                int(np.argmax(ll)) == it.answer
                for it, ll in zip(items, _direct(tiny_pair[1], tokenizer, items))
                if it.category == "colors"
            ]
        )
    )
    # changed questions in a category invalidate only that category's cache entry
    changed = [
        MCItem(it.question + " ?", it.choices, it.answer, it.category) if it.category == "colors" else it
        for it in items
    ]
    fresh = run_mc_benchmark(model, tokenizer, changed, batch_size=4, cache_dir=cache, progress=False)
    direct = _direct(model, tokenizer, [it for it in changed if it.category == "colors"])
    assert fresh.set_index("category").loc["colors", "accuracy"] == pytest.approx(
        np.mean(
            [int(np.argmax(ll)) == it.answer for it, ll in zip([c for c in changed if c.category == "colors"], direct)]
        )
    )


def test_score_pair_gives_a_paired_benchmark_table(tokenizer, tiny_pair, mmlu_file):
    base, ft = tiny_pair
    items = load_mc_items(mmlu_file)
    table = score_pair((base, tokenizer), (ft, tokenizer), items, batch_size=4, progress=False)
    right_b = [int(np.argmax(ll)) == it.answer for it, ll in zip(items, _direct(base, tokenizer, items))]
    right_a = [int(np.argmax(ll)) == it.answer for it, ll in zip(items, _direct(ft, tokenizer, items))]
    for _, row in table.iterrows():
        idx = [i for i, it in enumerate(items) if it.category == row.category]
        assert row.score_before == pytest.approx(np.mean([right_b[i] for i in idx]))
        assert row.score_after == pytest.approx(np.mean([right_a[i] for i in idx]))
        assert row.n_lost == sum(right_b[i] and not right_a[i] for i in idx)
        assert row.n_gained == sum(right_a[i] and not right_b[i] for i in idx)
        assert row.ci_before_low <= row.score_before <= row.ci_before_high


def test_question_files_in_other_layouts(tmp_path):
    """CSV with choices as a JSON list and letter answers; MMLU-Pro style Parquet."""
    csv = tmp_path / "q.csv"
    pd.DataFrame(
        {
            "question": ["q one", "q two"],
            "choices": [json.dumps(["a", "b"]), json.dumps(["c", "d", "e"])],
            "answer": ["B", "c"],
            "subject": ["s1", "s2"],
        }
    ).to_csv(csv, index=False)
    items = load_mc_items(csv)
    assert [(it.choices, it.answer, it.category) for it in items] == [(("a", "b"), 1, "s1"), (("c", "d", "e"), 2, "s2")]
    pq = tmp_path / "pro.parquet"
    pd.DataFrame(
        {
            "question": ["x", "y", "z"],
            "options": [["1", "2"], ["3", "4"], ["5", "6"]],
            "answer": ["A", "B", "A"],
            "answer_index": [0, 1, 0],
            "category": ["law", "law", "math"],
        }
    ).to_parquet(pq)
    items = load_mc_items(pq, limit_per_category=1)
    assert [(it.category, it.answer) for it in items] == [("law", 0), ("math", 0)]
    assert [it.category for it in load_mc_items(pq, categories=["math"])] == ["math"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 5, "subject": "s"}))
    with pytest.raises(BenchmarkError, match="row 0.*answer 5"):
        load_mc_items(bad)
    with pytest.raises(BenchmarkError, match="not found"):
        load_mc_items(tmp_path / "missing.jsonl")


def test_wilson_interval_hand_values():
    low, high = wilson_interval(np.array([0, 5, 10]), np.array([10, 10, 10]))
    np.testing.assert_allclose(low, [0.0, 0.236593, 0.722467], atol=1e-5)
    np.testing.assert_allclose(high, [0.277533, 0.763407, 1.0], atol=1e-5)
