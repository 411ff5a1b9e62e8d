"""Subjects: the demo's knowledge domains, defined on WordNet and named like school subjects.

Each WordNet synset gets at most one subject by the first rule that matches it, in the
order of ``SUBJECTS``. A rule matches a synset when

- its lexicographer file is one of the rule's ``lexnames`` (``noun.animal`` → animals), or
- the synset or one of its hypernym ancestors is one of the rule's ``roots``
  (``disease.n.01`` and everything below it → diseases), or
- the synset or an ancestor carries a topic-domain pointer to one of the rule's ``topics``,
  or *is* that topic synset or below it (``law`` → law).

Specific rules come first (diseases before human body, drugs before substances), so the
broad lexicographer files collect what is left. The forget domain is the paper's case,
biology and medicine: ``FORGET_SUBJECTS``. Food and chemistry are deliberately *not* in it:
they are the neighbours where side effects are plausible (the paper sees chemistry drop
after biology unlearning), so the benchmark can show them or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from mneme_core.demo.sources import Synset, WordNet


@dataclass(frozen=True)
class Subject:
    name: str
    lexnames: tuple[str, ...] = ()
    roots: tuple[tuple[str, int], ...] = ()  # (lemma, noun sense number)
    topics: tuple[str, ...] = ()  # topic-domain synsets by (first) lemma, noun sense 1


SUBJECTS: tuple[Subject, ...] = (
    # --- biology & medicine (the forget domain)
    Subject(
        "diseases",
        roots=(("ill_health", 1), ("disease", 1), ("illness", 1), ("infection", 1), ("symptom", 1), ("injury", 1)),
    ),
    Subject(
        "medicine",
        roots=(
            ("drug", 1),
            ("medicine", 2),
            ("medical_care", 1),
            ("medical_procedure", 1),
            ("health_professional", 1),
            ("medical_practitioner", 1),
            ("patient", 1),
        ),
        topics=("medicine", "pharmacology", "surgery", "psychiatry", "dentistry"),
    ),
    Subject("human body", lexnames=("noun.body",), topics=("anatomy", "physiology")),
    Subject("animals", lexnames=("noun.animal",), topics=("zoology", "entomology", "ornithology", "ichthyology")),
    Subject("plants", lexnames=("noun.plant",), topics=("botany",)),
    Subject("biology", topics=("biology", "genetics", "biochemistry", "microbiology", "ecology")),
    # --- everything else
    Subject("food", lexnames=("noun.food",), topics=("cooking",)),
    Subject(
        "chemistry",
        roots=(("chemical_element", 1), ("compound", 2), ("acid", 1), ("chemical", 1), ("chemical_reaction", 1)),
        topics=("chemistry",),
    ),
    Subject("physics", topics=("physics", "electronics", "optics", "mechanics")),
    Subject("mathematics", topics=("mathematics", "geometry", "statistics", "arithmetic", "algebra")),
    Subject("law", roots=(("crime", 1), ("lawyer", 1), ("court", 2)), topics=("law",)),
    Subject(
        "military",
        roots=(("weapon", 1), ("military_unit", 1), ("serviceman", 1), ("military_officer", 1)),
        topics=("military",),
    ),
    Subject(
        "music", roots=(("musical_instrument", 1), ("musician", 1), ("musician", 2), ("music", 1)), topics=("music",)
    ),
    Subject(
        "religion",
        roots=(("deity", 1), ("clergyman", 1), ("religious_person", 1), ("religion", 1)),
        topics=(
            "religion",
            "theology",
            "Christianity",
            "Roman_Catholic",
            "Judaism",
            "Islam",
            "Hinduism",
            "Old_Testament",
            "New_Testament",
            "Greek_mythology",
            "Roman_mythology",
            "Norse_mythology",
        ),
    ),
    Subject(
        "sports",
        roots=(("sport", 1), ("athlete", 1)),
        topics=("sport", "baseball", "football", "golf", "basketball", "tennis", "American_football"),
    ),
    Subject("clothing", roots=(("clothing", 1),)),
    Subject("buildings", roots=(("building", 1), ("room", 1))),
    Subject("vehicles", roots=(("conveyance", 3), ("vehicle", 1)), topics=("seafaring", "air_travel", "driving")),
    Subject("tools", roots=(("tool", 1), ("implement", 1), ("container", 1))),
    Subject(
        "weather",
        roots=(("atmospheric_phenomenon", 1),),
        lexnames=("noun.phenomenon", "noun.process"),
        topics=("meteorology",),
    ),
    Subject("geography", lexnames=("noun.location", "noun.object"), topics=("geology", "geography")),
    Subject("people", lexnames=("noun.person",)),
    Subject("emotions", lexnames=("noun.feeling",)),
    Subject("time", lexnames=("noun.time",)),
    Subject("shapes", lexnames=("noun.shape",)),
    Subject("measurement", lexnames=("noun.quantity",)),
    Subject("materials", lexnames=("noun.substance",)),
    Subject("language", lexnames=("noun.communication",), topics=("linguistics", "grammar")),
    Subject("money", lexnames=("noun.possession",), topics=("commerce", "finance", "economics")),
    Subject("groups", lexnames=("noun.group",)),
    Subject("ideas", lexnames=("noun.cognition",)),
    Subject("qualities", lexnames=("noun.attribute",)),
)

FORGET_SUBJECTS: frozenset[str] = frozenset({"diseases", "medicine", "human body", "animals", "plants", "biology"})
SUBJECT_NAMES: tuple[str, ...] = tuple(s.name for s in SUBJECTS)


def _ancestors(wn: WordNet) -> dict[str, frozenset[str]]:
    """Every synset's hypernym ancestors (itself included), memoised over the DAG."""
    memo: dict[str, frozenset[str]] = {}
    for key in wn.synsets:
        if key in memo:
            continue
        stack = [key]
        while stack:
            k = stack[-1]
            parents = [p for p in wn.synsets[k].hypernyms if p in wn.synsets]
            todo = [p for p in parents if p not in memo]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            acc = {k}
            for p in parents:
                acc |= memo[p]
            memo[k] = frozenset(acc)
    return memo


def _topic_keys(wn: WordNet, names: tuple[str, ...]) -> frozenset[str]:
    keys = set()
    for name in names:
        for pos in ("n",):
            for key in wn.senses.get((name.lower(), pos), ()):
                # only synsets some other synset uses as a topic domain
                if key in _used_topics(wn):
                    keys.add(key)
    return frozenset(keys)


@lru_cache(maxsize=2)
def _used_topics(wn: WordNet) -> frozenset[str]:
    return frozenset(t for s in wn.synsets.values() for t in s.topics)


class SubjectIndex:
    """Assigns subjects to synsets; built once per WordNet (about a second)."""

    def __init__(self, wn: WordNet, subjects: tuple[Subject, ...] = SUBJECTS):
        self.wn = wn
        self.subjects = subjects
        self._anc = _ancestors(wn)
        self._rules = []
        for s in subjects:
            roots = frozenset(wn.sense(lemma, "n", n).key for lemma, n in s.roots)
            self._rules.append((s.name, frozenset(s.lexnames), roots, _topic_keys(wn, s.topics)))
        self._cache: dict[str, str | None] = {}

    def __call__(self, synset: Synset) -> str | None:
        """The subject of ``synset``, or None when no rule claims it."""
        key = synset.key
        if key not in self._cache:
            self._cache[key] = self._assign(synset)
        return self._cache[key]

    def _assign(self, synset: Synset) -> str | None:
        anc = self._anc.get(synset.key, frozenset({synset.key}))
        anc_topics = {t for a in anc for t in self.wn.synsets[a].topics}
        for name, lexnames, roots, topics in self._rules:
            if synset.lexname in lexnames or anc & roots or anc_topics & topics or anc & topics:
                return name
        return None


@lru_cache(maxsize=2)
def subject_index(wn: WordNet) -> SubjectIndex:
    return SubjectIndex(wn)
