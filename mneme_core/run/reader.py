"""``Run``: the read-only view of a run directory that the dashboard and users open."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from mneme_core.common.errors import RunError
from mneme_core.common.hub import REPO_ID, Hub
from mneme_core.common.lookup import LatentLookup, order_contexts
from mneme_core.run.search import search_descriptions
from mneme_core.run.sharing import fetch_run, push_run
from mneme_core.run.store import STAGES, read_manifest

# the stage that writes each table a Run reads, for the message when one is damaged
WRITTEN_BY = {
    "latents.parquet": "diff",
    "contexts.parquet": "contexts",
    "histograms.parquet": "contexts",
    "latent_topics.parquet": "categories",
    "benchmark.parquet": "evaluate",
    "evaluation.json": "evaluate",
}


def damaged(path: Path, exc: Exception) -> RunError:
    """A readable error for a run file that exists but cannot be read (a copy cut short, a
    disk error): which file, and the stage that writes it again."""
    stage = WRITTEN_BY.get(path.name)
    again = f"; re-make it with `mneme run {path.parent / 'config.yaml'} --force {stage}`" if stage else ""
    return RunError(f"{path} cannot be read ({type(exc).__name__}: {exc}){again}")


def read_table(path: Path) -> pd.DataFrame:
    """A run's Parquet table, or a RunError saying which file is damaged."""
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise damaged(path, exc) from exc


class Run:
    """Read-only view of a run directory; what the dashboard and users open."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise RunError(f"no run directory at {self.path}")
        self._manifest = read_manifest(self.path)
        self._latents: pd.DataFrame | None = None
        self._lookups: dict[str, LatentLookup | None] = {}

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @classmethod
    def from_pretrained(cls, source: str | Path, *, revision: str | None = None, hub: Hub | None = None) -> Run:
        """A run folder, or a run pushed to a hub dataset repo (``owner/name``, read from
        huggingface_hub's cache; ``mneme pull`` makes a copy of one's own)."""
        if isinstance(source, str) and not Path(source).exists() and REPO_ID.fullmatch(source):
            return cls(fetch_run(source, revision, hub))
        return cls(source)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, hub: Hub | None = None) -> str:
        """Push the run's tables, manifest and cross-coder to a hub dataset repo (not its
        activation shards); returns the commit URL."""
        return push_run(self.path, repo_id, private=private, hub=hub)

    @property
    def manifest(self) -> dict[str, Any]:
        return self._manifest

    @property
    def name(self) -> str:
        return str(self._manifest.get("name", self.path.name))

    def stage_status(self, stage: str) -> str:
        return self._manifest.get("stages", {}).get(stage, {}).get("status", "missing")

    def stage_metrics(self, stage: str) -> dict[str, Any]:
        return self._manifest.get("stages", {}).get(stage, {}).get("metrics", {}) or {}

    def missing_stages(self) -> list[str]:
        return [s for s in STAGES if self.stage_status(s) != "complete"]

    @property
    def latents(self) -> pd.DataFrame:
        if self._latents is None:
            path = self.path / "latents.parquet"
            self._latents = (
                read_table(path) if path.is_file() else pd.DataFrame({"latent": pd.Series([], dtype="int64")})
            )
        return self._latents

    def _lookup(self, name: str) -> LatentLookup | None:
        """Per-latent reader of a table, opened once per Run (it keeps the footer)."""
        if name not in self._lookups:
            path = self.path / f"{name}.parquet"
            self._lookups[name] = LatentLookup(path) if path.is_file() else None
        return self._lookups[name]

    def contexts(self, latent: int | None = None) -> pd.DataFrame:
        """Contexts of one latent (top first, then quantile samples), or all of them."""
        if latent is None:
            path = self.path / "contexts.parquet"
            return order_contexts(read_table(path)) if path.is_file() else pd.DataFrame()
        lookup = self._lookup("contexts")
        return order_contexts(lookup.frame(latent)) if lookup is not None else pd.DataFrame()

    def topics(self, latent: int) -> pd.DataFrame:
        """Where one latent's activation goes, by topic of the text (``category, share,
        corpus_share``, largest share first; the categories stage measures it from the
        activation store). Empty when the run has no such measurement."""
        lookup = self._lookup("latent_topics")
        return lookup.frame(latent) if lookup is not None else pd.DataFrame()

    def histogram(self, latent: int) -> pd.DataFrame:
        lookup = self._lookup("histograms")
        return lookup.frame(latent) if lookup is not None else pd.DataFrame()

    @property
    def benchmark(self) -> pd.DataFrame | None:
        path = self.path / "benchmark.parquet"
        return read_table(path) if path.is_file() else None

    @property
    def evaluation(self) -> dict[str, Any] | None:
        path = self.path / "evaluation.json"
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise damaged(path, exc) from exc
        if not isinstance(record, dict):
            raise damaged(path, ValueError("not a JSON object"))
        return record

    def search(self, query: str, k: int = 20) -> pd.DataFrame:
        """Latents whose descriptions are nearest to ``query`` (needs the interpret stage)."""
        return search_descriptions(self.path, query, k=k)


def open_run(path: str | Path) -> Run:
    """Open a run directory read-only. Raises RunError with a readable message."""
    return Run(path)
