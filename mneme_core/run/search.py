"""Semantic search over latent descriptions (LanceDB table ``descriptions`` in the run).

``Run.search`` and the dashboard call ``search_descriptions``; the query is embedded with
the same model, in the same precision, as the index: the ``embedding_dtype`` the categories
stage recorded when it built the index (the run's ``interpret`` settings for a run from
before it recorded one, float32 before the setting existed).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mneme_core.common.embeddings import get_embedder
from mneme_core.common.errors import RunError
from mneme_core.common.lance import LANCE_TABLE, import_lancedb
from mneme_core.run.store import read_manifest

COLUMNS = ["latent", "description", "category", "distance"]


def search_descriptions(run_path: str | Path, query: str, k: int = 20) -> pd.DataFrame:
    """The ``k`` latents whose descriptions are nearest to ``query``: columns latent,
    description, category, distance (cosine distance, 0 = same direction), nearest first."""
    run_path = Path(run_path)
    if not query or not query.strip():
        raise ValueError("search needs a non-empty query, e.g. 'viruses and infection'")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    db_path = run_path / "lancedb"
    if not db_path.is_dir() or LANCE_TABLE not in db_path_tables(db_path):
        raise RunError(
            f"{run_path} has no description index yet: run the interpret and categories stages "
            f"(`mneme interpret {run_path}`)"
        )
    manifest = read_manifest(run_path)
    if manifest.get("stages", {}).get("categories", {}).get("status") == "stale":
        # an earlier stage re-ran: the index holds the previous descriptions (after a retrain,
        # of other latents under the same numbers)
        raise RunError(
            f"{run_path}'s description index is stale (an earlier stage re-ran after it): "
            f"`mneme run {run_path / 'config.yaml'}` brings it up to date"
        )
    interpret = manifest.get("config", {}).get("interpret", {})
    built = manifest.get("stages", {}).get("categories", {}).get("metrics", {}) or {}
    dtype = built.get("embedding_dtype") or interpret.get("embedding_dtype", "float32")
    embedder = get_embedder(interpret.get("embedding_model", "") or "", dtype)
    vec = embedder.encode([query])[0]
    table = import_lancedb().connect(str(db_path)).open_table(LANCE_TABLE)
    hits = table.search(vec).distance_type("cosine").limit(int(k)).to_pandas()
    if not len(hits):
        return pd.DataFrame({c: pd.Series([], dtype="float64" if c == "distance" else "object") for c in COLUMNS})
    out = hits.rename(columns={"_distance": "distance"})[COLUMNS]
    return out.sort_values("distance", kind="stable").reset_index(drop=True)


def db_path_tables(db_path: Path) -> list[str]:
    db = import_lancedb().connect(str(db_path))
    result = db.list_tables() if hasattr(db, "list_tables") else db.table_names()
    names = getattr(result, "tables", result)
    return list(names)
