"""The demo's ground truth: a per-subject multiple-choice test generated from WordNet.

Each question shows a WordNet definition and asks for the word; the four options are
common words *of the same subject* (so a model must know the subject, not just tell an
animal from a tool). Scored by log-likelihood of each option with
``mneme_core.benchmarks.mc_runner`` in its cloze style.

Why "common words": a 135M model knows few rare terms, and a subject where the base model
is at chance cannot show a drop. A word is common when WordNet's SemCor tag counts
(``cntlist.rev``) have seen this sense at least once, or the word occurs in at least
``min_gloss_freq`` other WordNet definitions. The answer and its synonyms must not occur in
the definition (no giveaways).

The question's synset is the benchmark *item*; the split (split.py) keeps every item out
of the forget, retain and neutral text.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass

import pandas as pd

from mneme_core.demo.sources import Synset, WordNet, read_sense_counts, sense_key
from mneme_core.demo.subjects import SubjectIndex

QUESTION_TEMPLATE = "Which word means: {definition}?"
BENCHMARK_COLUMNS = ["subject", "question", "choices", "answer", "item_key", "term"]
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class BenchmarkSpec:
    """Sizes of the generated test (defaults: the committed demo)."""

    n_per_subject: int = 120  # questions drawn per subject
    min_questions: int = 100  # subjects with fewer usable questions are left out
    n_choices: int = 4
    min_gloss_freq: int = 5
    seed: int = 0


def gloss_frequencies(wn: WordNet) -> Counter[str]:
    """How often each lowercase word occurs across all WordNet definitions."""
    freq: Counter[str] = Counter()
    for s in wn.synsets.values():
        freq.update(_WORD.findall(s.definition.lower()))
    return freq


def _is_common(s: Synset, counts: dict[str, int], freq: Counter[str], min_gloss_freq: int) -> bool:
    word = s.lemmas[0]
    if not re.fullmatch(r"[a-z]{3,}", word):
        return False
    return counts.get(sense_key(s), 0) > 0 or freq[word] >= min_gloss_freq


def _leaks(definition: str, words: tuple[str, ...]) -> bool:
    """Does the definition contain one of the words (or a 5-letter stem of one)?"""
    tokens = set(_WORD.findall(definition.lower()))
    for w in words:
        w = w.lower()
        if w in tokens or any(t.startswith(w[:5]) for t in tokens if len(w) >= 5):
            return True
    return False


def candidates_by_subject(wn: WordNet, subjects: SubjectIndex, min_gloss_freq: int = 5) -> dict[str, list[Synset]]:
    """Common-word noun synsets per subject, one synset per word (its first sense in the subject)."""
    counts = read_sense_counts()
    freq = gloss_frequencies(wn)
    out: dict[str, list[Synset]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for s in sorted((s for s in wn.synsets.values() if s.pos == "n"), key=lambda s: s.key):
        subject = subjects(s)
        if subject is None or not _is_common(s, counts, freq, min_gloss_freq):
            continue
        if (subject, s.lemmas[0]) in seen:
            continue
        seen.add((subject, s.lemmas[0]))
        out[subject].append(s)
    return dict(out)


def make_questions(wn: WordNet, subjects: SubjectIndex, spec: BenchmarkSpec = BenchmarkSpec()) -> pd.DataFrame:
    """The benchmark table: one row per question, ``BENCHMARK_COLUMNS``.

    ``choices`` holds ``n_choices`` words, ``answer`` the index of the right one (uniformly
    placed), ``item_key`` the question's synset (kept out of every text split).
    """
    rng = random.Random(spec.seed)
    rows = []
    for subject, pool in sorted(candidates_by_subject(wn, subjects, spec.min_gloss_freq).items()):
        usable = [s for s in pool if s.definition and not _leaks(s.definition, s.words)]
        rng.shuffle(usable)
        chosen: list[dict[str, object]] = []
        for s in usable:
            if len(chosen) == spec.n_per_subject:
                break
            distractors = [
                d.lemmas[0]
                for d in pool
                if d.key != s.key and d.lemmas[0] not in s.lemmas and not _leaks(s.definition, (d.lemmas[0],))
            ]
            if len(distractors) < spec.n_choices - 1:
                continue
            wrong = rng.sample(distractors, spec.n_choices - 1)
            answer = rng.randrange(spec.n_choices)
            choices = wrong[:answer] + [s.lemmas[0]] + wrong[answer:]
            chosen.append(
                {
                    "subject": subject,
                    "question": QUESTION_TEMPLATE.format(definition=s.definition),
                    "choices": choices,
                    "answer": answer,
                    "item_key": s.key,
                    "term": s.lemmas[0],
                }
            )
        if len(chosen) >= spec.min_questions:
            rows.extend(chosen)
    return pd.DataFrame(rows, columns=BENCHMARK_COLUMNS)


def to_mc_items(questions: pd.DataFrame) -> list:
    """The questions as ``mc_runner.MCItem`` (category = subject)."""
    from mneme_core.benchmarks.mc_runner import MCItem

    return [MCItem(r.question, tuple(r.choices), int(r.answer), r.subject) for r in questions.itertuples()]
