"""LanceDB access shared by the categories stage (which writes the description index) and
search (which reads it)."""

from __future__ import annotations

import os

LANCE_TABLE = "descriptions"  # the table of description embeddings under a run's lancedb/


def import_lancedb():
    """lancedb, with its Rust logger quiet unless the user asked for it (it warns on every
    first write that no dataset existed yet)."""
    os.environ.setdefault("LANCE_LOG", "error")
    import lancedb

    return lancedb
