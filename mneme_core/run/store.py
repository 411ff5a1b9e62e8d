"""The run directory: the contract between the engine and the dashboard.

Layout (docs/ARCHITECTURE.md describes it as the contract between the stages)::

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
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock

from mneme_core.common.atomic import atomic_write_json, write_parquet
from mneme_core.common.config import MANIFEST, ConfigError, StudyConfig, build, resolve_run_relative
from mneme_core.common.errors import RunError
from mneme_core.run.model_files import changed_message, changed_models

SCHEMA_VERSION = 1
STAGES = ("collect", "train", "diff", "contexts", "interpret", "categories", "evaluate")
LOCK_FILE = ".lock"
STORE_DIR = "activations"  # the paired activation store (collect)
REPLICAS_DIR = "seeds"  # a run's copies retrained with other seeds (`mneme seeds`), inside it
SEED_AGREEMENT_FILE = "seed_agreement.json"  # what those copies predicted (evaluation.seeds)


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
    if not isinstance(manifest, dict) or not isinstance(manifest.get("stages", {}), dict):
        raise RunError(f"{path} is not a MNEME manifest (a JSON object with a 'stages' object); the run is damaged.")
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


def _with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every field a newer MNEME added filled in at its default, so a run made
    before the field existed is still the same study; as it is if it no longer validates."""
    try:
        return build(StudyConfig, config).to_dict()
    except ConfigError:
        return config


def init_run(
    run_path: str | Path,
    config: dict[str, Any],
    provenance: list[dict[str, Any]] | None = None,
    model_files: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Create the run folder and manifest, or check that an existing one is the same study.

    Re-running a study resumes it; running a different config into the same folder is an
    error rather than a silent mix of two studies. ``model_files`` (``model_files.model_prints``)
    extends that to the weights: a model rebuilt in place under the same path is refused
    too. A run recorded without them (an older MNEME) takes them on its next resume.
    """
    run_path = Path(run_path)
    with _locked(run_path):
        path = run_path / MANIFEST
        if path.is_file():
            manifest = read_manifest(run_path)
            # the same files, whether named from the run folder or the working folder
            old, new = (resolve_run_relative(c, run_path) for c in (manifest.get("config", {}), config))
            old, new = (_with_defaults({k: v for k, v in c.items() if k != "run_dir"}) for c in (old, new))
            if old != new:
                raise RunError(
                    f"{run_path} already holds a run with a different config (sections differ: "
                    f"{', '.join(differing_keys(old, new))}). To resume that run, use its own settings "
                    f"(`mneme run {run_path / 'config.yaml'}`; `mneme interpret` / `mneme evaluate` change them); "
                    "for another study, use another run_dir or delete the folder to start over."
                )
            if model_files is not None:
                _check_model_files(run_path, manifest, model_files)
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
        if model_files is not None:
            manifest["model_files"] = model_files
        atomic_write_json(path, manifest)
        return manifest


def _check_model_files(run_path: Path, manifest: dict[str, Any], model_files: dict[str, str]) -> None:
    """Refuse a resume whose model weights are not the ones the run was made from (the
    caller holds the lock); record the fingerprints of models the run has none of yet."""
    recorded = manifest.get("model_files") or {}
    changed = changed_models(recorded, model_files)
    if changed:
        raise RunError(
            f"{changed_message(run_path, changed)}. Use another run_dir, or delete the folder to start over."
        )
    if set(model_files) - set(recorded):
        manifest["model_files"] = {**model_files, **recorded}
        atomic_write_json(run_path / MANIFEST, manifest)


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


def replace_latent_table(run_path: str | Path, df: pd.DataFrame) -> None:
    """Start the latents table afresh from ``df``: one row per latent of the dictionary.

    The diff stage's job. Its rows are the dictionary's latents; a table left by an earlier
    dictionary (a retrain at another size, or one copied with the run) must not decide
    them, and its later stages' columns (contexts, descriptions, categories) describe
    latents that no longer exist, so they go; re-running diff marks those stages stale
    and they write their columns again.
    """
    if "latent" not in df.columns:
        raise ValueError("replace_latent_table needs a 'latent' column")
    with _locked(Path(run_path)):
        write_parquet(Path(run_path) / "latents.parquet", df.sort_values("latent").reset_index(drop=True))


def merge_latent_columns(run_path: str | Path, df: pd.DataFrame) -> None:
    """Add or replace columns of the latents table, keyed on ``latent``.

    Stages own their columns (diff: norms and β; contexts: freq, max_act; interpret:
    description ...); this lets each write its own without touching the others. The rows
    are the table's own (the diff stage set them with :func:`replace_latent_table`).
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


def drop_latent_columns(run_path: str | Path, columns: Sequence[str]) -> None:
    """Remove a stage's columns from the latents table (a measurement the stage can no
    longer vouch for must not stay beside the ones it rewrote)."""
    path = Path(run_path) / "latents.parquet"
    with _locked(Path(run_path)):
        if path.is_file():
            current = pd.read_parquet(path)
            if any(c in current.columns for c in columns):
                write_parquet(path, current.drop(columns=[c for c in columns if c != "latent"], errors="ignore"))
