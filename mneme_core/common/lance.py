"""LanceDB access shared by the categories stage (which writes the description index) and
search (which reads it)."""

from __future__ import annotations

import os
import warnings
from datetime import timedelta
from typing import Any

LANCE_TABLE = "descriptions"  # the table of description embeddings under a run's lancedb/


def import_lancedb():
    """lancedb, with its Rust logger quiet unless the user asked for it (it warns on every
    first write that no dataset existed yet)."""
    os.environ.setdefault("LANCE_LOG", "error")
    import lancedb

    return lancedb


def drop_old_versions(table: Any) -> None:
    """Delete every version of ``table`` but the latest.

    An overwrite in LanceDB is a new version beside the old ones, so a run whose categories
    stage re-runs (a new taxonomy, ``mneme demo --refresh``) would otherwise grow by a copy
    of the index each time. Only the stage that owns the table writes it, and readers open
    the latest version, so nothing still needs the old ones; LanceDB's warning about
    concurrent users of old versions is expected here and silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"optimize\(cleanup_older_than=0\)")
        table.optimize(cleanup_older_than=timedelta(0), delete_unverified=True)
