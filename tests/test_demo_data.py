"""The demo's text sources, subjects, disjoint split and WordNet benchmark (no model needed)."""

from __future__ import annotations

import pytest

from mneme_core.demo import sources as S
from mneme_core.demo.benchmark import BENCHMARK_COLUMNS, BenchmarkSpec, make_questions
from mneme_core.demo.split import SplitSpec, TextItem, all_items, documents, split_items
from mneme_core.demo.subjects import FORGET_SUBJECTS, SUBJECT_NAMES, subject_index


@pytest.fixture(scope="module")
def wn():
    return S.read_wordnet()


@pytest.fixture(scope="module")
def subjects(wn):
    return subject_index(wn)


@pytest.fixture(scope="module")
def questions(wn, subjects):
    return make_questions(wn, subjects, BenchmarkSpec())


@pytest.fixture(scope="module")
def items(wn, subjects):
    return all_items(wn, subjects)


def test_sources_parse_real_packages(wn):
    dog = wn.sense("dog", "n", 1)
    assert dog.lexname == "noun.animal"
    assert dog.definition.startswith("a member of the genus Canis")
    assert dog.examples == ("the dog barked all night",)
    assert "domestic dog" in dog.words and dog.text.startswith("dog, domestic dog")
    assert len(wn.synsets) == 117_659  # WordNet 3.0: 82,115 nouns + 13,767 verbs + 18,156 adj + 3,621 adv
    verses = S.read_bible()
    assert len(verses) == 31_102
    assert verses[0].text == "In the beginning God created the heaven and the earth."
    assert verses[-1].key == "kjv:Rev22:21"
    devil = S.read_devil()
    assert len(devil) > 900
    entry = next(e for e in devil if e.headword == "abasement")
    assert entry.text.startswith("ABASEMENT, n. A decent and customary mental attitude")
    prov = S.provenance()
    assert {p["package"] for p in prov} == {"wordnet-base", "bible-kjv-text", "dict-devil"}
    assert all(p["licence"] for p in prov)


def test_missing_package_is_a_clear_error(tmp_path):
    with pytest.raises(S.SourceError, match="wordnet-base"):
        S.read_wordnet(tmp_path)
    with pytest.raises(S.SourceError, match="dict-devil"):
        S.read_devil(tmp_path)
    with pytest.raises(S.SourceError, match="bible-kjv"):
        S.read_bible("no-such-bible-program")


@pytest.mark.parametrize(
    "lemma,number,subject",
    [
        ("dog", 1, "animals"),
        ("oak", 2, "plants"),
        ("heart", 2, "human body"),
        ("influenza", 1, "diseases"),
        ("aspirin", 1, "medicine"),
        ("bread", 1, "food"),
        ("oxygen", 1, "chemistry"),
        ("lawyer", 1, "law"),
        ("guitar", 1, "music"),
        ("rifle", 1, "military"),
        ("bishop", 1, "religion"),
        ("hat", 1, "clothing"),
        ("car", 1, "vehicles"),
        ("hammer", 2, "tools"),
        ("joy", 1, "emotions"),
        ("circle", 1, "mathematics"),
        ("hour", 1, "time"),
    ],
)
def test_subjects_of_known_words(wn, subjects, lemma, number, subject):
    assert subjects(wn.sense(lemma, "n", number)) == subject


def test_benchmark_has_enough_clean_questions(questions):
    assert list(questions.columns) == BENCHMARK_COLUMNS
    per_subject = questions.groupby("subject").size()
    assert len(per_subject) >= 20 and per_subject.min() >= 100
    assert set(per_subject.index) <= set(SUBJECT_NAMES)
    assert FORGET_SUBJECTS & set(per_subject.index) and set(per_subject.index) - FORGET_SUBJECTS
    assert questions["item_key"].is_unique
    for row in questions.itertuples():
        assert len(row.choices) == 4 and len(set(row.choices)) == 4
        assert row.choices[row.answer] == row.term
        assert row.term not in row.question.split("means: ", 1)[1].lower().split()  # no giveaway
    # the right answer sits at every position about equally often
    assert questions["answer"].value_counts(normalize=True).between(0.2, 0.3).all()


def test_benchmark_is_deterministic(wn, subjects, questions):
    again = make_questions(wn, subjects, BenchmarkSpec())
    assert again.equals(questions)
    other = make_questions(wn, subjects, BenchmarkSpec(seed=1))
    assert not other["item_key"].equals(questions["item_key"])


def test_split_is_disjoint_and_complete(items, questions):
    spec = SplitSpec()
    split = split_items(items, questions["item_key"], spec)
    sets = {name: {it.key for it in lst} for name, lst in split.sets().items()}
    bench = set(questions["item_key"])
    assert not sets["forget"] & sets["retain"] and not sets["forget"] & sets["neutral"]
    assert not sets["retain"] & sets["neutral"]
    for name, keys in sets.items():
        assert not keys & bench, name
    everything = {it.key for it in items}
    assert sets["forget"] | sets["retain"] | sets["neutral"] | (bench & everything) == everything
    # forget = biology & medicine WordNet glosses only; the neutral corpus holds every source and that domain too
    assert all(it.source == "wordnet" and it.domain in FORGET_SUBJECTS for it in split.forget)
    assert not any(it.domain in FORGET_SUBJECTS and it.source == "wordnet" for it in split.retain)
    assert {it.source for it in split.neutral} == {"wordnet", "kjv", "devil"}
    assert sum(it.domain in FORGET_SUBJECTS for it in split.neutral) > 1000
    # the assignment depends on the item, not on the order or the company it comes in
    shuffled = split_items(list(reversed(items))[: len(items) // 2], questions["item_key"], spec)
    assert {it.key for it in shuffled.forget} <= sets["forget"]
    assert {it.key for it in shuffled.neutral} <= sets["neutral"]


def test_a_larger_neutral_corpus_starts_with_the_smaller_one(items, questions):
    """bench/dev_corpus.py compares a study on more neutral text with the demo-size one: the
    larger corpus must be the smaller one plus more, never a different draw."""
    from mneme_core.demo.build import CHARS_PER_TOKEN, neutral_documents

    split = split_items(items, questions["item_key"], SplitSpec())
    small, large = (neutral_documents(split, n) for n in (20_000, 40_000))
    assert large[: len(small)] == small and len(large) > len(small)
    assert sum(len(d["text"]) for d in small) >= 20_000 * CHARS_PER_TOKEN  # headroom over the token count


def test_documents_group_and_shuffle():
    items = [TextItem(f"n:{i}", "wordnet", "animals" if i % 2 else "law", f"text {i}") for i in range(40)]
    items += [TextItem(f"kjv:Ge1:{i}", "kjv", "Ge", f"verse {i}") for i in range(1, 17)]
    docs = documents(items, per_doc=8, seed=0)
    assert len(docs) == 3 + 3 + 2
    assert all(len(set(d["keys"].split(","))) == len(d["keys"].split(",")) for d in docs)
    assert {k for d in docs for k in d["keys"].split(",")} == {it.key for it in items}
    kjv = [d for d in docs if d["source"] == "kjv"]
    assert kjv[0]["text"].startswith("verse") and all(" " in d["text"] for d in kjv)
    assert [d["domain"] for d in docs] != sorted(d["domain"] for d in docs)  # shuffled across domains


def test_rebuild_refuses_a_work_folder_with_other_settings(tmp_path):
    from mneme_core.demo.build import DemoBuildError, _check_work_dir
    from mneme_core.demo.study import FULL, REDUCED

    _check_work_dir(tmp_path, REDUCED)
    _check_work_dir(tmp_path, REDUCED)  # same settings: resume
    with pytest.raises(DemoBuildError, match=r"sizes\.context_length, sizes\.corpus_tokens, .* differ"):
        _check_work_dir(tmp_path, FULL)


def test_a_build_runs_at_one_concrete_precision_and_a_resumed_build_keeps_it(tmp_path, monkeypatch):
    """ "auto" becomes bfloat16 only where the CPU runs it natively; the study then trains
    and embeds in it, and collects in float32; a build resumed on another machine keeps the precision it began with."""
    from dataclasses import replace

    from mneme_core.common import hardware
    from mneme_core.demo import build
    from mneme_core.demo.study import FULL, REDUCED, resolve_precision, study_config

    auto = replace(REDUCED, precision="auto")
    for speedup, want in ((3.0, "bfloat16"), (0.02, "float32")):
        monkeypatch.setattr(hardware, "cpu_bf16_speedup", lambda s=speedup: s)
        assert resolve_precision(auto).precision == want
    assert resolve_precision(replace(REDUCED, precision="bfloat16")).precision == "bfloat16"  # asked for: kept
    assert FULL.precision == "auto"  # the demo's own (development scenario 12b)
    assert REDUCED.precision == "float32"  # the tests' build: the same on every CPU
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision(replace(REDUCED, precision="float16"))

    paths = {"run_dir": tmp_path / "run", "delta": None, "corpus": tmp_path / "c.jsonl", "benchmark": tmp_path / "b"}
    bf16 = study_config("x", sizes=replace(REDUCED, precision="bfloat16"), **paths)
    f32 = study_config("x", sizes=replace(REDUCED, precision="float32"), **paths)
    read = lambda c: (c["activations"]["forward_dtype"], c["training"]["dtype"], c["interpret"]["embedding_dtype"])  # noqa: E731
    assert read(bf16) == ("", "bfloat16", "bfloat16")  # collection stays the models' own float32 (scenario 9)
    assert read(f32) == ("", "float32", "float32")
    assert bf16["models"]["base"]["dtype"] == "float32"  # prompt lab and confirmation stay float32

    monkeypatch.setattr(hardware, "cpu_bf16_speedup", lambda: 3.0)
    started = build._precision_for(tmp_path, REDUCED, "auto")
    build._check_work_dir(tmp_path, started)
    monkeypatch.setattr(hardware, "cpu_bf16_speedup", lambda: 0.02)  # resumed on a CPU without native bf16
    assert build._precision_for(tmp_path, REDUCED, None).precision == started.precision == "bfloat16"
    with pytest.raises(build.DemoBuildError, match=r"sizes\.precision differ"):  # asked for another: named
        build._check_work_dir(tmp_path, build._precision_for(tmp_path, REDUCED, "float32"))


def test_a_work_folder_from_before_the_precision_setting_resumes_as_float32(tmp_path):
    import json

    from mneme_core.demo import build
    from mneme_core.demo.study import REDUCED

    build._check_work_dir(tmp_path, REDUCED)
    key = json.loads((tmp_path / "build_key.json").read_text())
    del key["sizes"]["precision"]
    (tmp_path / "build_key.json").write_text(json.dumps(key))
    sizes = build._precision_for(tmp_path, REDUCED, None)
    assert sizes.precision == "float32"
    build._check_work_dir(tmp_path, sizes)  # no "sizes differ"


def test_rebuild_plan_of_runs():
    from mneme_core.demo import rebuild_plan

    assert rebuild_plan(None) == (None, True)  # every run and the null control
    assert rebuild_plan(("lora-people",)) == (["lora-people"], False)
    assert rebuild_plan(("rmu-strong", "null-control")) == (["rmu-strong"], True)
    # the null control needs the first RMU run's base activations: it never builds alone
    assert rebuild_plan(("null-control",)) == (["rmu"], True)
