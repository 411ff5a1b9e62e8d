"""Auditors' marks on latents, kept in ``run_path/triage.sqlite``.

Several people review one run at once (two browser sessions, or a script beside the
dashboard), so marks live in SQLite in WAL mode: every write is its own short
transaction, readers never block writers, and a crash or restart loses nothing that
was committed. ``marks`` holds the current mark per latent; ``events`` keeps every change
so a disputed mark can be traced.

A latent number means something only within one dictionary: after a retrain, latent 5 is
another feature. So every mark and event records the dictionary it was made on (a hash
of the cross-coder's weights, ``dictionary_fingerprint``), and a store answers with the
marks of the run's current dictionary. Marks from an earlier dictionary are kept, not
attached to the new latents: ``stale_marks`` lists them. A file from before marks
recorded their dictionary is upgraded on first open, its marks assigned to the
dictionary the run holds then (the only one they can have been made on, unless the run
was retrained before the upgrade).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

MARKS = ("confirmed side effect", "expected", "false alarm", "unsure")
DB_NAME = "triage.sqlite"
WEIGHTS = Path("crosscoder") / "model.safetensors"  # where training and import put it
_MARKS_TABLE = """
CREATE TABLE IF NOT EXISTS marks (
    dictionary TEXT NOT NULL,
    latent     INTEGER NOT NULL,
    mark       TEXT NOT NULL,
    note       TEXT NOT NULL DEFAULT '',
    author     TEXT NOT NULL DEFAULT '',
    updated    REAL NOT NULL,
    PRIMARY KEY (dictionary, latent)
);
"""
_SCHEMA = (
    _MARKS_TABLE
    + """
CREATE TABLE IF NOT EXISTS events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    dictionary TEXT NOT NULL DEFAULT '',
    latent     INTEGER NOT NULL,
    mark       TEXT,
    note       TEXT NOT NULL DEFAULT '',
    author     TEXT NOT NULL DEFAULT '',
    at         REAL NOT NULL
);
"""
)
_COLUMNS = ("latent", "mark", "note", "author", "updated")


SAMPLE_BYTES = 4 << 20  # read from each end of the weights file for its fingerprint


def dictionary_fingerprint(run_path: str | Path) -> str:
    """Which dictionary a run holds ('' before one is trained): 16 hex digits of a SHA-256
    over the weights file's size, its first and its last ``SAMPLE_BYTES``. The content, not
    a timestamp or a file date, so a copied or re-published run keeps its marks and a
    retrain (or an imported cross-coder) does not inherit them: new weights differ from
    the first tensor bytes on. Not the whole file, because a paper-size cross-coder is
    gigabytes and the first page that opens marks would read all of it. Computed once per
    file state per process."""
    path = Path(run_path) / WEIGHTS
    try:
        stat = path.stat()
    except FileNotFoundError:
        return ""
    return _file_hash(str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_hash(path: str, inode: int, size: int, mtime_ns: int) -> str:  # all four: the cache key
    """The fingerprint of one state of a file (an atomic rewrite gives it a new inode and date)."""
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(SAMPLE_BYTES))
        if size > 2 * SAMPLE_BYTES:
            f.seek(size - SAMPLE_BYTES)
        digest.update(f.read())  # the rest of a small file, the tail of a large one
    return digest.hexdigest()[:16]


class TriageError(ValueError):
    """A mark that cannot be stored (unknown label, bad latent id)."""


class TriageStore:
    """Marks of one run. Cheap to create; each call opens its own short connection.

    A connection per call (not one per object) keeps the store safe to share between
    Streamlit sessions and threads, which sqlite3 connections are not. Reading never
    writes: the file appears with the first mark, so browsing a run (a checkout of the
    bundled demo, a folder someone shared) leaves it as it was.
    """

    def __init__(self, run_path: str | Path, timeout_s: float = 30.0, dictionary: str | None = None):
        """``dictionary`` names the dictionary marks belong to; by default the run's own
        (``dictionary_fingerprint``)."""
        self.path = Path(run_path) / DB_NAME
        self.timeout_s = timeout_s
        self.dictionary = dictionary_fingerprint(run_path) if dictionary is None else dictionary

    def _prepare(self, con: sqlite3.Connection) -> None:
        """Create the tables, or give an older file the current layout; a write lock only
        when there is something to do (two first opens of an old file upgrade it once)."""
        if "dictionary" in _columns(con, "marks") and _columns(con, "events"):
            return
        con.execute("BEGIN IMMEDIATE")
        if _columns(con, "marks") and "dictionary" not in _columns(con, "marks"):
            self._upgrade(con)
        for statement in filter(str.strip, _SCHEMA.split(";")):
            con.execute(statement)
        con.execute("COMMIT")

    def _upgrade(self, con: sqlite3.Connection) -> None:
        """Give a file from before marks recorded their dictionary the new layout, inside
        the caller's transaction; its marks and events go to this store's dictionary."""
        con.execute("ALTER TABLE marks RENAME TO marks_before_dictionary")
        con.execute(_MARKS_TABLE)
        con.execute(
            "INSERT INTO marks(dictionary, latent, mark, note, author, updated) "
            "SELECT ?, latent, mark, note, author, updated FROM marks_before_dictionary",
            (self.dictionary,),
        )
        con.execute("DROP TABLE marks_before_dictionary")
        if _columns(con, "events") and "dictionary" not in _columns(con, "events"):
            con.execute("ALTER TABLE events ADD COLUMN dictionary TEXT NOT NULL DEFAULT ''")
            con.execute("UPDATE events SET dictionary = ?", (self.dictionary,))

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        try:
            self._wal(con)
            con.execute("PRAGMA synchronous=NORMAL")
            yield con
        finally:
            con.close()

    def _wal(self, con: sqlite3.Connection) -> None:
        """Put the file in WAL mode (a property of the file: once set, every later connection
        finds it). SQLite answers a switch that races another connection's lock with "database
        is locked" at once, without waiting out the busy timeout, so the switch is retried
        until the timeout; a file already in WAL needs no switch."""
        deadline = time.monotonic() + self.timeout_s
        while con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            try:
                con.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection | None]:
        """A connection to read from, or None where no mark was ever made (no file)."""
        if not self.path.is_file():
            yield None
            return
        with self._connect() as con:
            self._prepare(con)  # an older layout, or a file a first writer is creating now
            yield con

    def set_mark(self, latent: int, mark: str, note: str = "", author: str = "") -> None:
        """Store (or replace) the mark of one latent of this dictionary; an immediate
        transaction so two writers serialise instead of failing."""
        if mark not in MARKS:
            raise TriageError(f"unknown mark {mark!r}; use one of {', '.join(MARKS)}")
        latent = _check_latent(latent)
        now = time.time()
        with self._connect() as con:
            self._prepare(con)
            con.execute("BEGIN IMMEDIATE")
            con.execute(
                "INSERT INTO marks(dictionary, latent, mark, note, author, updated) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT(dictionary, latent) DO UPDATE SET mark=excluded.mark, note=excluded.note, "
                "author=excluded.author, updated=excluded.updated",
                (self.dictionary, latent, mark, note, author, now),
            )
            con.execute(
                "INSERT INTO events(dictionary, latent, mark, note, author, at) VALUES (?,?,?,?,?,?)",
                (self.dictionary, latent, mark, note, author, now),
            )
            con.execute("COMMIT")

    def clear_mark(self, latent: int, author: str = "") -> None:
        latent = _check_latent(latent)
        with self._reading() as con:
            if con is None:
                return
            con.execute("BEGIN IMMEDIATE")
            con.execute("DELETE FROM marks WHERE dictionary=? AND latent=?", (self.dictionary, latent))
            con.execute(
                "INSERT INTO events(dictionary, latent, mark, note, author, at) VALUES (?,?,NULL,'',?,?)",
                (self.dictionary, latent, author, time.time()),
            )
            con.execute("COMMIT")

    def get_mark(self, latent: int) -> dict | None:
        latent = _check_latent(latent)
        with self._reading() as con:
            if con is None:
                return None
            row = con.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM marks WHERE dictionary=? AND latent=?",
                (self.dictionary, latent),
            ).fetchone()
        return None if row is None else dict(zip(_COLUMNS, row))

    def marks(self) -> pd.DataFrame:
        """The current marks of this dictionary, one row per latent, oldest first."""
        return self._marks("dictionary = ?")

    def stale_marks(self) -> pd.DataFrame:
        """Marks made on other dictionaries (before a retrain), with a ``dictionary``
        column: kept for the record, attached to no latent of this one."""
        return self._marks("dictionary != ?", with_dictionary=True)

    def _marks(self, where: str, with_dictionary: bool = False) -> pd.DataFrame:
        cols = [*_COLUMNS, "dictionary"] if with_dictionary else list(_COLUMNS)
        with self._reading() as con:
            query = f"SELECT {', '.join(cols)} FROM marks WHERE {where} ORDER BY updated, latent"
            rows = [] if con is None else con.execute(query, (self.dictionary,)).fetchall()
        df = pd.DataFrame(rows, columns=cols)
        df["latent"] = df["latent"].astype("int64")
        df["updated"] = pd.to_datetime(df["updated"].astype("float64"), unit="s")
        return df

    def history(self, latent: int | None = None) -> pd.DataFrame:
        """Every change, oldest first, with the dictionary each was made on; ``latent``
        keeps that latent number's changes on any dictionary."""
        query = "SELECT latent, mark, note, author, at, dictionary FROM events"
        args: tuple = ()
        if latent is not None:
            query, args = query + " WHERE latent=?", (_check_latent(latent),)
        with self._reading() as con:
            rows = [] if con is None else con.execute(query + " ORDER BY id", args).fetchall()
        return pd.DataFrame(rows, columns=["latent", "mark", "note", "author", "at", "dictionary"])

    def version(self) -> int:
        """A number that grows with every change: a cheap cache key for the marks."""
        with self._reading() as con:
            return 0 if con is None else int(con.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])


def _columns(con: sqlite3.Connection, table: str) -> list[str]:
    """The columns of ``table`` ([] where there is no such table)."""
    return [row[1] for row in con.execute(f"PRAGMA table_info({table})")]


def _check_latent(latent: int) -> int:
    try:
        value = int(latent)
    except (TypeError, ValueError) as exc:
        raise TriageError(f"latent id must be an integer, got {latent!r}") from exc
    if value < 0:
        raise TriageError(f"latent id must be >= 0, got {value}")
    return value


def with_marks(latents: pd.DataFrame, marks: pd.DataFrame) -> pd.DataFrame:
    """The latents table with ``mark`` and ``note`` columns ('' where unmarked)."""
    out = latents.drop(columns=[c for c in ("mark", "note") if c in latents.columns])
    if marks.empty:
        return out.assign(mark="", note="")
    m = marks.set_index("latent")
    return out.assign(
        mark=out["latent"].map(m["mark"]).fillna("").astype(str),
        note=out["latent"].map(m["note"]).fillna("").astype(str),
    )


def export_csv(latents: pd.DataFrame, marks: pd.DataFrame) -> bytes:
    """The marked set with the latents' key numbers, as CSV bytes for download."""
    cols = [
        c
        for c in ("latent", "description", "category", "attribution", "label_by_norm", "rel_norm", "shift")
        if c in latents.columns
    ]
    table = marks.merge(latents[cols], on="latent", how="left")
    return table.to_csv(index=False).encode()
