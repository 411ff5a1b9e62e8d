"""Triage marks: validation, export, and durability under two concurrent writers + restart."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pandas as pd
import pytest

from mneme_core.views.triage import (
    MARKS,
    TriageError,
    TriageStore,
    export_csv,
    with_marks,
)


def test_set_replace_clear_and_history(tmp_path):
    store = TriageStore(tmp_path)
    store.set_mark(5, "unsure", "look again", author="ana")
    store.set_mark(5, "confirmed side effect", "<b>chem</b>", author="bo")
    store.set_mark(2, "expected")
    assert store.get_mark(5)["mark"] == "confirmed side effect"
    assert store.marks()["latent"].tolist() == [5, 2]
    store.clear_mark(2)
    assert store.get_mark(2) is None
    hist = store.history(5)
    assert hist["mark"].tolist() == ["unsure", "confirmed side effect"] and hist["author"].tolist() == ["ana", "bo"]


def test_reading_a_run_without_marks_writes_nothing(tmp_path):
    store = TriageStore(tmp_path)
    assert store.marks().empty and store.stale_marks().empty and store.history().empty
    assert store.get_mark(1) is None and store.version() == 0
    store.clear_mark(1)
    assert list(tmp_path.iterdir()) == []
    store.set_mark(1, "unsure")
    assert (tmp_path / "triage.sqlite").is_file() and store.version() == 1


def test_bad_marks_are_refused(tmp_path):
    store = TriageStore(tmp_path)
    with pytest.raises(TriageError, match="unknown mark"):
        store.set_mark(1, "bad")
    with pytest.raises(TriageError, match="integer"):
        store.set_mark("x", "unsure")
    assert store.marks().empty


def test_marks_join_and_export(tmp_path):
    store = TriageStore(tmp_path)
    store.set_mark(1, "false alarm", "formatting")
    lat = pd.DataFrame({"latent": [0, 1], "description": ["a", "b"], "shift": [0.0, -2.0]})
    joined = with_marks(lat, store.marks())
    assert joined["mark"].tolist() == ["", "false alarm"]
    csv = export_csv(lat, store.marks()).decode()
    assert csv.splitlines()[0].startswith("latent,mark,note") and "1,false alarm,formatting" in csv


def _writer(run_path: str, start: int, n: int) -> None:
    store = TriageStore(run_path)
    for i in range(start, start + n):
        store.set_mark(i, MARKS[i % len(MARKS)], f"note {i}", author=f"w{start}")


def test_two_concurrent_writers_then_restart_lose_nothing(tmp_path):
    # no file yet: the two writers' first marks race to create it
    n = 150
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), start, n)) for start in (0, 1000)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    # "restart": a fresh interpreter opens the folder and reads every mark back
    code = textwrap.dedent(f"""
        from mneme_core.views.triage import TriageStore
        m = TriageStore({str(tmp_path)!r}).marks()
        print(len(m), sorted(m.latent.tolist()) == list(range({n})) + list(range(1000, {1000 + n})))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(2 * n), "True"]
    assert (tmp_path / "triage.sqlite").exists()
    assert len(TriageStore(tmp_path).history()) == 2 * n


def test_stakeholder_report_escapes_run_text_and_embeds_figures(tmp_path):
    from mneme_core import open_run
    from mneme_core.run.store import init_run, merge_latent_columns
    from mneme_core.views.report import build_report

    init_run(tmp_path, {"name": "<script>alert(1)</script>", "models": {"layer": 1}})
    merge_latent_columns(
        tmp_path,
        pd.DataFrame(
            {
                "latent": [0, 1, 2],
                "rel_norm": [0.05, 0.5, 0.95],
                "shift": [-2.0, 0.0, 2.0],
                "beta_err_base": [1.0, 1.0, 0.2],
                "beta_err_ft": [0.2, 1.0, 1.0],
                "attribution": ["suppressed", "unchanged", "amplified"],
                "category": ["bio", "law", "bio"],
                "description": ["<img src=x onerror=alert(1)>", "b", "c"],
            }
        ),
    )
    store = TriageStore(tmp_path)
    store.set_mark(0, "confirmed side effect", "<b>note</b>")
    page = build_report(open_run(tmp_path), store.marks())
    assert "<script>alert(1)</script>" not in page and "<img src=x" not in page and "<b>note</b>" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "confirmed side effect" in page
    assert page.count('class="plotly-graph-div"') == 4  # rel norm, shift, β scatter, categories


def _dictionary(run_path, seed: int) -> None:
    """A real cross-coder saved into the run, as training leaves it."""
    from mneme_core.dictionary.crosscoder import BatchTopKCrossCoder

    BatchTopKCrossCoder(d_model=8, n_latents=16, k=2, seed=seed).save(run_path / "crosscoder")


def test_marks_stay_with_the_dictionary_they_were_made_on(tmp_path):
    import shutil

    from mneme_core.views.triage import dictionary_fingerprint

    run = tmp_path / "run"
    _dictionary(run, seed=0)
    first = dictionary_fingerprint(run)
    TriageStore(run).set_mark(5, "confirmed side effect", "chemistry")
    # copied without its file dates (cp -r, a git checkout): the same dictionary, the same marks
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, copy_function=shutil.copy)
    assert dictionary_fingerprint(copy) == first
    assert TriageStore(copy).get_mark(5)["note"] == "chemistry"
    # retrained: latent 5 is another feature now
    _dictionary(run, seed=1)
    assert dictionary_fingerprint(run) not in ("", first)
    store = TriageStore(run)
    assert store.get_mark(5) is None and store.marks().empty
    assert store.stale_marks()[["latent", "mark", "dictionary"]].values.tolist() == [
        [5, "confirmed side effect", first]
    ]
    store.set_mark(5, "false alarm")  # marks of the new dictionary do not overwrite the old one's
    assert store.marks()["mark"].tolist() == ["false alarm"]
    assert store.stale_marks()["mark"].tolist() == ["confirmed side effect"]
    assert store.history(5)["dictionary"].tolist() == [first, store.dictionary]
    assert TriageStore(run, dictionary=first).get_mark(5)["mark"] == "confirmed side effect"


def test_a_file_from_before_dictionaries_is_upgraded_once(tmp_path):
    import sqlite3

    _dictionary(tmp_path, seed=0)
    con = sqlite3.connect(tmp_path / "triage.sqlite")
    con.executescript(
        """
        CREATE TABLE marks (latent INTEGER PRIMARY KEY, mark TEXT NOT NULL, note TEXT NOT NULL DEFAULT '',
                            author TEXT NOT NULL DEFAULT '', updated REAL NOT NULL);
        CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, latent INTEGER NOT NULL, mark TEXT,
                             note TEXT NOT NULL DEFAULT '', author TEXT NOT NULL DEFAULT '', at REAL NOT NULL);
        INSERT INTO marks VALUES (3, 'expected', 'old note', 'ana', 1.0), (7, 'unsure', '', '', 2.0);
        INSERT INTO events(latent, mark, note, author, at) VALUES (3, 'expected', 'old note', 'ana', 1.0),
                                                                  (7, 'unsure', '', '', 2.0);
        """
    )
    con.commit()
    con.close()
    store = TriageStore(tmp_path)
    assert store.marks()[["latent", "mark", "note", "author"]].values.tolist() == [
        [3, "expected", "old note", "ana"],
        [7, "unsure", "", ""],
    ]
    assert set(store.history()["dictionary"]) == {store.dictionary} and store.stale_marks().empty
    store.set_mark(3, "false alarm")
    again = TriageStore(tmp_path)  # a second open finds the new layout and changes nothing
    assert again.get_mark(3)["mark"] == "false alarm" and len(again.marks()) == 2 and len(again.history()) == 3


def test_a_writer_waits_while_another_connection_holds_the_new_file(tmp_path):
    """SQLite answers a switch to WAL mode that meets another connection's write lock with
    "database is locked" at once, without its busy timeout: a writer arriving while another
    is still creating the file must wait for it, not lose its mark (seen once as a failure of
    the two-writer test above)."""
    store = TriageStore(tmp_path)
    first = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
    first.execute("BEGIN IMMEDIATE")  # a write lock on a file still in rollback-journal mode
    release = threading.Timer(0.3, first.execute, args=("COMMIT",))
    release.start()
    try:
        store.set_mark(7, MARKS[0], "waited")
    finally:
        release.join()
        first.close()
    assert store.marks().set_index("latent").loc[7, "note"] == "waited"
