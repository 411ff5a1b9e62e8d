"""Split the demo text once, by item, into disjoint forget / retain / neutral / benchmark sets.

- *benchmark*: the question synsets (benchmark.py) — in no text set at all;
- *forget*: part of the forget domain's synsets (biology & medicine for the demo), what RMU
  unlearns;
- *retain*: part of everything else (other WordNet synsets, KJV verses, Devil's Dictionary
  entries), what RMU must keep (the paper's WikiText);
- *neutral*: the rest of every domain, the forget domain included (like the Pile, which holds
  biology too) — the corpus MNEME compares the models on. Disjoint from forget text and
  benchmark items, so MNEME never sees the unlearning data or the test.

Assignment is a hash of (seed, item key): stable, independent of item order and of which
other items exist, so a rebuild on another machine gives the same split.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mneme_core.common.atomic import atomic_write_bytes
from mneme_core.demo.sources import WordNet, read_bible, read_devil
from mneme_core.demo.subjects import FORGET_SUBJECTS, SubjectIndex


@dataclass(frozen=True)
class TextItem:
    key: str  # "n:02084071", "kjv:Ge1:1", "devil:abasement"
    source: str  # wordnet | kjv | devil
    domain: str  # subject for WordNet items with one, lexname otherwise; book; "devil"
    text: str


@dataclass(frozen=True)
class SplitSpec:
    forget_fraction: float = 0.5  # of the forget domain's (non-benchmark) items
    retain_fraction: float = 0.25  # of all other items
    seed: int = 0


@dataclass
class DemoSplit:
    forget: list[TextItem]
    retain: list[TextItem]
    neutral: list[TextItem]
    benchmark_keys: frozenset[str]

    def sets(self) -> dict[str, list[TextItem]]:
        return {"forget": self.forget, "retain": self.retain, "neutral": self.neutral}


def _unit(seed: int, key: str) -> float:
    h = hashlib.sha1(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def all_items(wn: WordNet, subjects: SubjectIndex) -> list[TextItem]:
    """Every text item of the three sources, with its domain."""
    items = [TextItem(s.key, "wordnet", subjects(s) or s.lexname, s.text) for s in wn.synsets.values() if s.definition]
    items += [TextItem(v.key, "kjv", v.book, v.text) for v in read_bible()]
    items += [TextItem(e.key, "devil", "devil", e.text) for e in read_devil()]
    return items


def split_items(
    items: Iterable[TextItem],
    benchmark_keys: Iterable[str],
    spec: SplitSpec = SplitSpec(),
    forget_subjects: frozenset[str] = FORGET_SUBJECTS,
) -> DemoSplit:
    """Assign every non-benchmark item to exactly one of forget / retain / neutral."""
    bench = frozenset(benchmark_keys)
    forget: list[TextItem] = []
    retain: list[TextItem] = []
    neutral: list[TextItem] = []
    for item in items:
        if item.key in bench:
            continue
        u = _unit(spec.seed, item.key)
        if item.source == "wordnet" and item.domain in forget_subjects:
            (forget if u < spec.forget_fraction else neutral).append(item)
        else:
            (retain if u < spec.retain_fraction else neutral).append(item)
    return DemoSplit(forget, retain, neutral, bench)


def documents(items: Sequence[TextItem], per_doc: int = 8, seed: int = 0) -> list[dict[str, str]]:
    """Group items into short documents of one source and domain, in shuffled order.

    Why group: a context window then reads like a page of a glossary or a Bible passage
    rather than a jumble; why shuffle the documents: any prefix of the corpus is a mix of
    all domains, so a token budget samples them all. Consecutive verses stay together.
    """
    groups: dict[tuple[str, str], list[TextItem]] = {}
    for item in items:
        groups.setdefault((item.source, item.domain), []).append(item)
    docs = []
    for (source, domain), group in sorted(groups.items()):
        if source != "kjv":
            group = sorted(group, key=lambda it: _unit(seed, it.key))
        sep = " " if source == "kjv" else "\n"
        for i in range(0, len(group), per_doc):
            chunk = group[i : i + per_doc]
            docs.append(
                {
                    "text": sep.join(it.text for it in chunk),
                    "source": source,
                    "domain": domain,
                    "keys": ",".join(it.key for it in chunk),
                }
            )
    random.Random(seed).shuffle(docs)
    return docs


def write_jsonl(path: str | Path, docs: Iterable[dict[str, str]]) -> None:
    """Atomically write documents as JSON lines (``datasets`` reads them offline)."""
    data = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
    atomic_write_bytes(path, data.encode())
