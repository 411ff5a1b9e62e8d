"""Auditors' marks on latents, kept in ``run_path/triage.sqlite``.

Several people review one run at once (two browser sessions, or a script beside the
dashboard), so marks live in SQLite in WAL mode: every write is its own short
transaction, readers never block writers, and a crash or restart loses nothing that
was committed. ``marks`` holds the current mark per latent; ``events`` keeps every change
so a disputed mark can be traced.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

MARKS = ("confirmed side effect", "expected", "false alarm", "unsure")
DB_NAME = "triage.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS marks (
    latent  INTEGER PRIMARY KEY,
    mark    TEXT NOT NULL,
    note    TEXT NOT NULL DEFAULT '',
    author  TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    latent  INTEGER NOT NULL,
    mark    TEXT,
    note    TEXT NOT NULL DEFAULT '',
    author  TEXT NOT NULL DEFAULT '',
    at      REAL NOT NULL
);
"""


class TriageError(ValueError):
    """A mark that cannot be stored (unknown label, bad latent id)."""


class TriageStore:
    """Marks of one run. Cheap to create; each call opens its own short connection.

    A connection per call (not one per object) keeps the store safe to share between
    Streamlit sessions and threads, which sqlite3 connections are not.
    """

    def __init__(self, run_path: str | Path, timeout_s: float = 30.0):
        self.path = Path(run_path) / DB_NAME
        self.timeout_s = timeout_s
        with self._connect() as con:
            con.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
            yield con
        finally:
            con.close()

    def set_mark(self, latent: int, mark: str, note: str = "", author: str = "") -> None:
        """Store (or replace) the mark of one latent; an immediate transaction so two
        writers serialise instead of failing."""
        if mark not in MARKS:
            raise TriageError(f"unknown mark {mark!r}; use one of {', '.join(MARKS)}")
        latent = _check_latent(latent)
        now = time.time()
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            con.execute(
                "INSERT INTO marks(latent, mark, note, author, updated) VALUES (?,?,?,?,?) "
                "ON CONFLICT(latent) DO UPDATE SET mark=excluded.mark, note=excluded.note, "
                "author=excluded.author, updated=excluded.updated",
                (latent, mark, note, author, now),
            )
            con.execute(
                "INSERT INTO events(latent, mark, note, author, at) VALUES (?,?,?,?,?)",
                (latent, mark, note, author, now),
            )
            con.execute("COMMIT")

    def clear_mark(self, latent: int, author: str = "") -> None:
        latent = _check_latent(latent)
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            con.execute("DELETE FROM marks WHERE latent=?", (latent,))
            con.execute(
                "INSERT INTO events(latent, mark, note, author, at) VALUES (?,NULL,'',?,?)",
                (latent, author, time.time()),
            )
            con.execute("COMMIT")

    def get_mark(self, latent: int) -> dict | None:
        with self._connect() as con:
            row = con.execute(
                "SELECT latent, mark, note, author, updated FROM marks WHERE latent=?", (_check_latent(latent),)
            ).fetchone()
        return None if row is None else dict(zip(("latent", "mark", "note", "author", "updated"), row))

    def marks(self) -> pd.DataFrame:
        """All current marks, one row per latent, oldest first."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT latent, mark, note, author, updated FROM marks ORDER BY updated, latent"
            ).fetchall()
        df = pd.DataFrame(rows, columns=["latent", "mark", "note", "author", "updated"])
        df["latent"] = df["latent"].astype("int64")
        df["updated"] = pd.to_datetime(df["updated"].astype("float64"), unit="s")
        return df

    def history(self, latent: int | None = None) -> pd.DataFrame:
        query = "SELECT latent, mark, note, author, at FROM events"
        args: tuple = ()
        if latent is not None:
            query, args = query + " WHERE latent=?", (_check_latent(latent),)
        with self._connect() as con:
            rows = con.execute(query + " ORDER BY id", args).fetchall()
        return pd.DataFrame(rows, columns=["latent", "mark", "note", "author", "at"])

    def version(self) -> int:
        """A number that grows with every change: a cheap cache key for the marks."""
        with self._connect() as con:
            return int(con.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])


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
