"""Offline, permissively licensed text for the demo study, read from Debian packages.

Three sources, each a Debian package (`.ci/run` installs them):

- ``wordnet-base``: every synset with its lexicographer file (``noun.animal`` ...), its
  lemmas, gloss, hypernyms and topic domains (``;c`` pointers). WordNet 3.0 licence.
- ``bible-kjv-text``: the King James Bible, one verse per item, read through the ``bible``
  program of package ``bible-kjv`` (the data file is a private compressed format).
  Public domain.
- ``dict-devil``: Ambrose Bierce's *The Devil's Dictionary*, one entry per item, read from
  the dictd index + dictzip (gzip-compatible) data file. Public domain.

Why these: they are the only real English text on the machine with licences that allow
committing derived data, and WordNet's lexicographer files and topic domains give us a
ground-truth *domain* for every item, which the split and the benchmark need.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
DEVIL_DIR = Path("/usr/share/dictd")
BIBLE_SPEC = "Genesis1:1-Revelation22:21"

# Lexicographer file numbers -> names (lexnames(5WN), WordNet 3.0).
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()

_POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}


class SourceError(RuntimeError):
    """A text source is not installed or unreadable; the message says which package to install."""


@dataclass(frozen=True)
class Synset:
    """One WordNet synset. ``key`` (``n:02084071``) is stable across runs and machines."""

    key: str
    pos: str
    lexname: str
    lemmas: tuple[str, ...]
    lex_ids: tuple[int, ...]
    definition: str
    examples: tuple[str, ...]
    hypernyms: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()  # keys of topic-domain synsets (;c pointers)

    @property
    def words(self) -> tuple[str, ...]:
        """Lemmas as plain words (underscores to spaces, WordNet's adjective markers dropped)."""
        return tuple(re.sub(r"\(\w+\)$", "", w).replace("_", " ") for w in self.lemmas)

    @property
    def text(self) -> str:
        """The synset as one line of text: ``dog, domestic dog: a member of ...; "the dog barked"``."""
        ex = "; ".join(f'"{e}"' for e in self.examples)
        return f"{', '.join(self.words)}: {self.definition}" + (f"; {ex}" if ex else "")


@dataclass(frozen=True)
class Verse:
    key: str  # "kjv:Ge1:1"
    book: str
    text: str


@dataclass(frozen=True)
class DevilEntry:
    key: str  # "devil:ABDICATION"
    headword: str
    text: str


@dataclass(eq=False)  # hashed by identity: one parsed WordNet per process
class WordNet:
    """All synsets by key, plus the lemma → synsets index in WordNet's sense order."""

    synsets: dict[str, Synset]
    senses: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    def sense(self, lemma: str, pos: str = "n", number: int = 1) -> Synset:
        """WordNet sense ``lemma.pos.number`` (e.g. ``disease``, ``n``, 1)."""
        keys = self.senses.get((lemma.lower(), pos), ())
        if not 1 <= number <= len(keys):
            raise KeyError(f"WordNet has no sense {lemma}.{pos}.{number:02d}")
        return self.synsets[keys[number - 1]]


# --------------------------------------------------------------------------- WordNet


def _split_gloss(gloss: str) -> tuple[str, tuple[str, ...]]:
    """Split a gloss into its definition and its quoted usage examples."""
    parts = [p.strip() for p in gloss.split(";")]
    definition = [p for p in parts if p and not p.startswith('"')]
    examples = tuple(p.strip('"').strip() for p in parts if p.startswith('"'))
    return "; ".join(definition), examples


def _parse_data_line(line: str, pos: str) -> Synset:
    head, _, gloss = line.partition(" | ")
    f = head.split()
    n_words = int(f[3], 16)
    lemmas = tuple(f[4 + 2 * i] for i in range(n_words))
    lex_ids = tuple(int(f[5 + 2 * i], 16) for i in range(n_words))
    i = 4 + 2 * n_words
    n_ptrs = int(f[i])
    i += 1
    hypernyms, topics = [], []
    for _ in range(n_ptrs):
        symbol, target, tpos = f[i], f[i + 1], f[i + 2]
        tpos = "a" if tpos == "s" else tpos
        if symbol in ("@", "@i"):
            hypernyms.append(f"{tpos}:{target}")
        elif symbol == ";c":
            topics.append(f"{tpos}:{target}")
        i += 4
    definition, examples = _split_gloss(gloss.strip())
    return Synset(
        key=f"{pos}:{f[0]}",
        pos=pos,
        lexname=LEXNAMES[int(f[1])],
        lemmas=lemmas,
        lex_ids=lex_ids,
        definition=definition,
        examples=examples,
        hypernyms=tuple(hypernyms),
        topics=tuple(topics),
    )


@lru_cache(maxsize=2)
def read_wordnet(root: Path = WORDNET_DIR) -> WordNet:
    """Parse WordNet's ``data.*`` and ``index.*`` files (about 2 s for all 117k synsets)."""
    root = Path(root)
    if not (root / "data.noun").is_file():
        raise SourceError(
            f"WordNet data not found in {root}: install the Debian package `wordnet-base` "
            "(apt-get install wordnet-base)"
        )
    synsets: dict[str, Synset] = {}
    for pos, name in _POS_FILES.items():
        with open(root / f"data.{name}", encoding="latin-1") as fh:
            for line in fh:
                if line.startswith("  "):  # licence header
                    continue
                s = _parse_data_line(line, pos)
                synsets[s.key] = s
    senses: dict[tuple[str, str], tuple[str, ...]] = {}
    for pos, name in _POS_FILES.items():
        with open(root / f"index.{name}", encoding="latin-1") as fh:
            for line in fh:
                if line.startswith("  "):
                    continue
                f = line.split()
                n_synsets = int(f[2])
                senses[(f[0], pos)] = tuple(f"{pos}:{off}" for off in f[-n_synsets:])
    return WordNet(synsets=synsets, senses=senses)


@lru_cache(maxsize=2)
def read_sense_counts(root: Path = WORDNET_DIR) -> dict[str, int]:
    """SemCor tag counts per sense key (``dog%1:05:00::`` → 42) from ``cntlist.rev``."""
    path = Path(root) / "cntlist.rev"
    if not path.is_file():
        raise SourceError(f"{path} missing: install the Debian package `wordnet-base`")
    counts = {}
    with open(path, encoding="latin-1") as fh:
        for line in fh:
            key, _, count = line.split()
            counts[key] = int(count)
    return counts


def sense_key(synset: Synset, i: int = 0) -> str:
    """WordNet sense key of lemma ``i`` of a noun or verb synset (for ``cntlist.rev``)."""
    ss_type = {"n": 1, "v": 2}[synset.pos]
    lexnum = LEXNAMES.index(synset.lexname)
    return f"{synset.lemmas[i].lower()}%{ss_type}:{lexnum:02d}:{synset.lex_ids[i]:02d}::"


# --------------------------------------------------------------------------- KJV Bible


@lru_cache(maxsize=1)
def read_bible(program: str = "bible") -> tuple[Verse, ...]:
    """All 31,102 KJV verses via ``bible -f`` (one formatted verse per line)."""
    exe = shutil.which(program)
    if exe is None:
        raise SourceError(
            f"the `{program}` program is missing: install the Debian packages `bible-kjv` and "
            "`bible-kjv-text` (apt-get install bible-kjv bible-kjv-text)"
        )
    proc = subprocess.run([exe, "-f", "-l100000", BIBLE_SPEC], capture_output=True, text=True, timeout=120, check=False)
    verses = []
    for line in proc.stdout.splitlines():
        m = re.match(r"^(\S+?)(\d+):(\d+)\s+(.*)$", line.strip())
        if m:
            book, chap, verse, text = m.groups()
            verses.append(Verse(key=f"kjv:{book}{chap}:{verse}", book=book, text=text.strip()))
    if len(verses) < 30_000:
        raise SourceError(
            f"`{program} -f {BIBLE_SPEC}` gave {len(verses)} verses, expected 31,102: is "
            f"`bible-kjv-text` installed? (stderr: {proc.stderr.strip()[:200]})"
        )
    return tuple(verses)


# --------------------------------------------------------------------------- Devil's Dictionary

_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _b64_int(s: str) -> int:
    """dictd's index numbers: base64 digits, most significant first."""
    n = 0
    for c in s:
        n = n * 64 + _B64[c]
    return n


@lru_cache(maxsize=1)
def read_devil(root: Path = DEVIL_DIR) -> tuple[DevilEntry, ...]:
    """The Devil's Dictionary entries (headword + definition text, whitespace collapsed)."""
    root = Path(root)
    index, data = root / "devil.index", root / "devil.dict.dz"
    if not index.is_file() or not data.is_file():
        raise SourceError(f"The Devil's Dictionary not found in {root}: install the Debian package `dict-devil`")
    blob = gzip.decompress(data.read_bytes())  # dictzip is gzip-compatible
    entries = []
    for line in index.read_text(encoding="utf-8").splitlines():
        head, off, length = line.split("\t")[:3]
        if head.startswith("00database") or head.startswith("00-database"):
            continue
        body = blob[_b64_int(off) : _b64_int(off) + _b64_int(length)].decode("utf-8", "replace")
        text = " ".join(body.split())
        if len(text) > len(head) + 5:
            entries.append(DevilEntry(key=f"devil:{head}", headword=head, text=text))
    return tuple(entries)


# --------------------------------------------------------------------------- provenance


def _deb_version(package: str) -> str:
    exe = shutil.which("dpkg-query")
    if exe is None:
        return "unknown"
    proc = subprocess.run([exe, "-W", "-f=${Version}", package], capture_output=True, text=True, check=False)
    return proc.stdout.strip() or "unknown"


def provenance() -> list[dict[str, str]]:
    """Provenance + licence records for the run manifest (``store.add_provenance``)."""
    return [
        {
            "name": "WordNet 3.0",
            "package": "wordnet-base",
            "version": _deb_version("wordnet-base"),
            "files": str(WORDNET_DIR / "data.{noun,verb,adj,adv}"),
            "licence": "WordNet 3.0 licence (permissive, BSD-like; keep Princeton's copyright notice)",
            "url": "https://wordnet.princeton.edu/license-and-commercial-use",
            "use": "glosses: forget / retain / neutral text; benchmark questions",
        },
        {
            "name": "King James Bible (1611)",
            "package": "bible-kjv-text",
            "version": _deb_version("bible-kjv-text"),
            "files": "/usr/lib/bible.data via the `bible` program (bible-kjv)",
            "licence": "public domain",
            "url": "https://packages.debian.org/bible-kjv-text",
            "use": "retain and neutral text",
        },
        {
            "name": "The Devil's Dictionary (Ambrose Bierce, 1911)",
            "package": "dict-devil",
            "version": _deb_version("dict-devil"),
            "files": str(DEVIL_DIR / "devil.{index,dict.dz}"),
            "licence": "public domain (copyright expired)",
            "url": "https://packages.debian.org/dict-devil",
            "use": "retain and neutral text",
        },
    ]
