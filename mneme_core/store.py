"""The run directory: the contract between the engine and the dashboard.

Layout (DESIGN §6)::

    run.json            manifest: schema version, models, layer, corpus, configs,
                        stage status + metrics, provenance of every data source
    config.yaml         the study config as validated
    activations/        paired activation shards (activations.py)
    crosscoder/         model.safetensors + config.json (crosscoder.py), checkpoints/
    latents.parquet     one row per latent; stages add columns
    contexts.parquet    latent, kind, rank, tokens, token_ids, acts, max_act, source
    histograms.parquet  latent, edges, counts (activation histograms)
    benchmark.parquet   category, score_before, score_after, n_questions, ...
    evaluation.json     sets, thresholds, metrics for MNEME and the baselines
    lancedb/            description embeddings for search
    triage.sqlite       auditors' marks

Every write is atomic (temp file + rename), so a crash never leaves a half-written table
that looks complete. A stage is complete only once the manifest says so, and it says so
only after the stage's files are in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock

from mneme_core.config import resolve_run_relative
from mneme_core.lookup import LatentLookup, order_contexts

if TYPE_CHECKING:
    from mneme_core.interop import Hub

SCHEMA_VERSION = 1
STAGES = ("collect", "train", "diff", "contexts", "interpret", "categories", "evaluate")
MANIFEST = "run.json"
LOCK_FILE = ".lock"


class RunError(RuntimeError):
    """A run directory is missing, broken or from an incompatible schema version."""


# --------------------------------------------------------------------------- atomic io


def _mkstemp_beside(path: Path) -> tuple[int, str]:
    """A temp file next to ``path`` with the permissions a plain ``open()`` would give.

    mkstemp makes files 0600, and a rename keeps that: a run written by one user would be
    unreadable to an auditor or a dashboard running as another.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    return fd, tmp


def fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = _mkstemp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default).encode())


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (Path, set, frozenset)):
        return str(obj) if isinstance(obj, Path) else sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; it replaces ``path`` only if the block succeeds.

    For writers that want a filename (safetensors, parquet writers).
    """
    path = Path(path)
    fd, tmp = _mkstemp_beside(path)
    os.close(fd)
    try:
        yield Path(tmp)
        fsync_file(tmp)  # on disk before the rename: a power cut never leaves a short file under the real name
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_parquet(path: str | Path, df: pd.DataFrame, row_group_size: int | None = None) -> None:
    table = pa.Table.from_pandas(df, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size)


# --------------------------------------------------------------------------- manifest


def differing_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Top-level keys whose values differ: what error messages name when settings changed."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


@contextlib.contextmanager
def _locked(run_path: Path) -> Iterator[None]:
    """Exclusive across processes (torchrun ranks, a CLI beside the dashboard) and
    platforms: the manifest's read-modify-write must not interleave."""
    run_path.mkdir(parents=True, exist_ok=True)
    with FileLock(run_path / LOCK_FILE):
        yield


def read_manifest(run_path: str | Path) -> dict[str, Any]:
    path = Path(run_path) / MANIFEST
    if not path.is_file():
        raise RunError(f"{run_path} is not a MNEME run: it has no {MANIFEST}. Create one with `mneme run STUDY.yaml`.")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunError(f"{path} is not valid JSON ({exc}); the run is damaged.") from exc
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RunError(
            f"{run_path} was written with run schema version {version!r}; this MNEME reads version "
            f"{SCHEMA_VERSION}. Re-run the study with this version, or open it with the MNEME that wrote it."
        )
    return manifest


def update_manifest(run_path: str | Path, fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Locked read-modify-write of the manifest; ``fn`` edits the dict in place."""
    run_path = Path(run_path)
    with _locked(run_path):
        manifest = read_manifest(run_path)
        fn(manifest)
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_json(run_path / MANIFEST, manifest)
    return manifest


def init_run(run_path: str | Path, config: dict[str, Any], provenance: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Create the run folder and manifest, or check that an existing one is the same study.

    Re-running a study resumes it; running a different config into the same folder is an
    error rather than a silent mix of two studies.
    """
    run_path = Path(run_path)
    with _locked(run_path):
        path = run_path / MANIFEST
        if path.is_file():
            manifest = read_manifest(run_path)
            # the same files, whether named from the run folder or the working folder
            old, new = (resolve_run_relative(c, run_path) for c in (manifest.get("config", {}), config))
            old, new = ({k: v for k, v in c.items() if k != "run_dir"} for c in (old, new))
            if old != new:
                raise RunError(
                    f"{run_path} already holds a run with a different config (sections differ: "
                    f"{', '.join(differing_keys(old, new))}). Use another run_dir, or delete the folder to start over."
                )
            return manifest
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "name": config.get("name", run_path.name),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "models": config.get("models", {}),
            "layer": config.get("models", {}).get("layer"),
            "corpus": config.get("corpus", {}),
            "config": config,
            "stages": {s: {"status": "missing"} for s in STAGES},
            "provenance": provenance or [],
        }
        atomic_write_json(path, manifest)
        return manifest


def set_stage(
    run_path: str | Path,
    stage: str,
    status: str,
    metrics: dict[str, Any] | None = None,
    info: dict[str, Any] | None = None,
) -> None:
    """Record a stage's status ('running', 'complete', 'failed') with its metrics."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")

    def edit(m: dict[str, Any]) -> None:
        entry = m.setdefault("stages", {}).setdefault(stage, {})
        entry["status"] = status
        entry["at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if metrics is not None:
            entry["metrics"] = metrics
        if info is not None:
            entry.update(info)

    update_manifest(run_path, edit)


def add_provenance(run_path: str | Path, items: list[dict[str, Any]]) -> None:
    def edit(m: dict[str, Any]) -> None:
        known = {json.dumps(p, sort_keys=True) for p in m.setdefault("provenance", [])}
        for item in items:
            if json.dumps(item, sort_keys=True) not in known:
                m["provenance"].append(item)

    update_manifest(run_path, edit)


# --------------------------------------------------------------------------- tables


def merge_latent_columns(run_path: str | Path, df: pd.DataFrame) -> None:
    """Add or replace columns of the latents table, keyed on ``latent``.

    Stages own their columns (diff: norms and β; contexts: freq, max_act; interpret:
    description ...); this lets each write its own without touching the others.
    """
    if "latent" not in df.columns:
        raise ValueError("merge_latent_columns needs a 'latent' column")
    path = Path(run_path) / "latents.parquet"
    with _locked(Path(run_path)):
        if path.is_file():
            current = pd.read_parquet(path)
            keep = [c for c in current.columns if c == "latent" or c not in df.columns]
            merged = current[keep].merge(df, on="latent", how="left")
        else:
            merged = df.copy()
        merged = merged.sort_values("latent").reset_index(drop=True)
        write_parquet(path, merged)


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
        from mneme_core.interop import REPO_ID, fetch_run

        if isinstance(source, str) and not Path(source).exists() and REPO_ID.fullmatch(source):
            return cls(fetch_run(source, revision, hub))
        return cls(source)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, hub: Hub | None = None) -> str:
        """Push the run's tables, manifest and cross-coder to a hub dataset repo (not its
        activation shards); returns the commit URL."""
        from mneme_core.interop import push_run

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
            self._latents = pd.read_parquet(path) if path.is_file() else pd.DataFrame({"latent": pd.Series([], dtype="int64")})
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
            return order_contexts(pd.read_parquet(path)) if path.is_file() else pd.DataFrame()
        lookup = self._lookup("contexts")
        return order_contexts(lookup.frame(latent)) if lookup is not None else pd.DataFrame()

    def histogram(self, latent: int) -> pd.DataFrame:
        lookup = self._lookup("histograms")
        return lookup.frame(latent) if lookup is not None else pd.DataFrame()

    @property
    def benchmark(self) -> pd.DataFrame | None:
        path = self.path / "benchmark.parquet"
        return pd.read_parquet(path) if path.is_file() else None

    @property
    def evaluation(self) -> dict[str, Any] | None:
        path = self.path / "evaluation.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def search(self, query: str, k: int = 20) -> pd.DataFrame:
        """Latents whose descriptions are nearest to ``query`` (needs the interpret stage)."""
        from mneme_core.search import search_descriptions

        return search_descriptions(self.path, query, k=k)


def open_run(path: str | Path) -> Run:
    """Open a run directory read-only. Raises RunError with a readable message."""
    return Run(path)
