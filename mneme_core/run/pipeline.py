"""Run a study's stages in order, skipping finished ones, so a killed run resumes.

The manifest is the single source of truth: a stage is skipped when its status is
``complete``, and it becomes complete only after its ``run_stage`` returned (its files are
already written atomically by then). A stage interrupted by a kill stays ``running`` (or
``failed``) and simply runs again; long stages resume from their own checkpoints.

Stages form a line (``store.STAGES``): each needs every stage before it. Running a subset
(``stages=[...]``, the per-stage CLI commands for people who run collection on one
machine and training on another) therefore checks that the earlier stages are complete,
and forcing a stage re-runs it *and every later selected stage*, because their inputs
changed. An imported cross-coder (``mneme import-crosscoder``) is the one exception: it does
not come from the stages before it, so it stays complete when they re-run.

Under ``torchrun`` every rank runs collection and training, which are distributed
(``DISTRIBUTED_STAGES``), and every rank leaves each of them together, once rank 0 has
written its outputs and status; the later stages read the whole run in one process, so they
run on rank 0 alone and the other ranks end after training. ``torchrun ... mneme run
STUDY.yaml`` is therefore the whole study. Only rank 0 writes stage status.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mneme_core.common.atomic import atomic_write_bytes
from mneme_core.common.config import (
    StudyConfig,
    build,
    dump_config,
    load_config,
    resolve_run_relative,
)
from mneme_core.common.distributed import is_main_process, wait_for_every_rank
from mneme_core.common.errors import RunError
from mneme_core.run.model_files import model_prints
from mneme_core.run.store import (
    STAGES,
    init_run,
    read_manifest,
    set_stage,
    update_manifest,
)

# the stages every torchrun rank takes part in; the others are rank 0's alone
DISTRIBUTED_STAGES = ("collect", "train")
STAGE_MODULES = {
    "collect": "mneme_core.collect.activations",
    "train": "mneme_core.dictionary.training",
    "diff": "mneme_core.analysis.diffing",
    "contexts": "mneme_core.analysis.contexts",
    "interpret": "mneme_core.interp",
    "categories": "mneme_core.interp.categories",
    "evaluate": "mneme_core.evaluation.evaluate",
}


class StageError(RunError):
    """A stage failed; the manifest records it as failed with this message."""


def _select(stages: Iterable[str] | None) -> list[str]:
    if stages is None:
        return list(STAGES)
    wanted = list(stages)
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise RunError(f"unknown stage {unknown[0]!r}; stages are: {', '.join(STAGES)}")
    return [s for s in STAGES if s in wanted]


def _forced(selected: list[str], force: bool | Iterable[str]) -> set[str]:
    """Stages to re-run: the forced ones and every selected stage after the first of them."""
    if isinstance(force, bool):
        return set(selected) if force else set()
    names = list(force)
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        raise RunError(f"cannot force unknown stage {unknown[0]!r}; stages are: {', '.join(STAGES)}")
    if not names:
        return set()
    first = min(STAGES.index(s) for s in names)
    return {s for s in selected if STAGES.index(s) >= first}


def _status(run_path: Path, stage: str) -> str:
    return read_manifest(run_path).get("stages", {}).get(stage, {}).get("status", "missing")


def _check_prerequisites(run_path: Path, selected: list[str]) -> None:
    """Every stage before the first selected one must already be complete."""
    first = STAGES.index(selected[0])
    for earlier in STAGES[:first]:
        status = _status(run_path, earlier)
        if status != "complete":
            raise RunError(
                f"stage '{selected[0]}' needs stage '{earlier}' first, but it is {status} in {run_path}; "
                f"run `mneme {earlier} STUDY.yaml` (or `mneme run STUDY.yaml`) first."
            )


def _skip_reason(cfg: StudyConfig, run_path: Path, stage: str) -> str:
    """Why a stage cannot run in this study yet ("" when it can).

    Only evaluation is optional: a study without benchmark results still gets its
    latents described and categorised, and can be evaluated later.
    """
    if stage == "evaluate" and not cfg.evaluation.benchmark.strip() and not (run_path / "benchmark.parquet").is_file():
        return "no benchmark configured; add one with `mneme evaluate RUN --benchmark FILE`"
    return ""


def _run_one(cfg: StudyConfig, run_path: Path, stage: str, progress: bool) -> dict[str, Any]:
    main = is_main_process()
    reason = _skip_reason(cfg, run_path, stage)
    if reason:
        if main:
            set_stage(run_path, stage, "skipped", info={"error": None, "reason": reason})
        return {}
    if main:
        set_stage(run_path, stage, "running")
    started = time.perf_counter()
    try:
        module = importlib.import_module(STAGE_MODULES[stage])
        metrics = module.run_stage(cfg, run_path, progress=progress) or {}
    except KeyboardInterrupt:
        if main:
            set_stage(run_path, stage, "failed", info={"error": "interrupted"})
        raise
    except Exception as exc:  # recorded, then re-raised as one readable error
        message = f"{type(exc).__name__}: {exc}" if not isinstance(exc, (RunError, ValueError)) else str(exc)
        if main:
            set_stage(run_path, stage, "failed", info={"error": message})
        raise StageError(f"stage '{stage}' failed: {message}") from exc
    if main:
        seconds = round(time.perf_counter() - started, 3)
        # a stale stage's reason ("'train' re-ran after it") no longer holds once it has re-run
        set_stage(
            run_path, stage, "complete", metrics=metrics, info={"seconds": seconds, "error": None, "reason": None}
        )
    return metrics


def run_study(
    cfg: StudyConfig | str | Path,
    stages: Iterable[str] | None = None,
    force: bool | Iterable[str] = False,
    *,
    progress: bool = True,
) -> Path:
    """Run (or resume) a study; returns its run directory.

    ``stages``: a subset of ``store.STAGES`` (default all); ``force``: True to re-run every
    selected stage, or stage names to re-run from the earliest of them on.
    """
    if not isinstance(cfg, StudyConfig):
        cfg = load_config(cfg)
    selected = _select(stages)
    force = force if isinstance(force, bool) else list(force)
    forced = _forced(selected, force)
    named = set(selected) if force is True else set(force or ())  # forced by name, not as a later stage
    run_path = cfg.run_path
    init_run(run_path, cfg.to_dict(), model_files=model_prints(cfg.models))
    if is_main_process():
        atomic_write_bytes(run_path / "config.yaml", dump_config(cfg).encode())
    if not selected:
        return run_path
    _check_prerequisites(run_path, selected)
    for stage in selected:
        if stage not in DISTRIBUTED_STAGES and not is_main_process():
            continue  # two ranks would each redo it and write the same files
        keep = stage not in forced or (stage not in named and _imported(run_path, stage))
        if keep and _status(run_path, stage) == "complete":
            continue
        mark_later_stale(run_path, stage)
        _run_one(cfg, run_path, stage, progress)
        if stage in DISTRIBUTED_STAGES:
            wait_for_every_rank()  # the next stage reads what rank 0 wrote last (the store's index)
    return run_path


def _imported(run_path: Path, stage: str) -> bool:
    """Whether a stage's output came from outside the run (``mneme import-crosscoder``).

    Such an output does not depend on the earlier stages, so re-running them neither
    makes it stale nor redoes it; only forcing that stage by name replaces it.
    """
    entry = read_manifest(run_path).get("stages", {}).get(stage, {})
    return (entry.get("metrics") or {}).get("imported") is True


def mark_later_stale(run_path: Path, stage: str) -> None:
    """A stage about to (re)run makes every later finished stage stale: their outputs were
    built on what is about to change. Stale is not complete, so `mneme run` redoes them and
    the dashboard says so, instead of showing, say, a prediction from old categories.
    Imported outputs stay complete (``_imported``)."""
    if not is_main_process():
        return
    for later in STAGES[STAGES.index(stage) + 1 :]:
        if _status(run_path, later) == "complete" and not _imported(run_path, later):
            set_stage(
                run_path,
                later,
                "stale",
                info={"reason": f"'{stage}' re-ran after it; `mneme run STUDY.yaml` brings it up to date"},
            )


def run_config(run_path: str | Path) -> StudyConfig:
    """The validated config a run was made with (from its manifest), its files found from
    the run folder where it names them from there (a published or moved run)."""
    run_path = Path(run_path)
    config = resolve_run_relative(read_manifest(run_path).get("config", {}), run_path)
    config["run_dir"] = str(run_path)
    return load_config(config)


def override_section(run_path: str | Path, section: str, changes: dict[str, Any]) -> StudyConfig:
    """Change one config section of an existing run (e.g. the explainer), validated.

    The manifest's config is rewritten so a later ``mneme run`` of the same run sees the
    new settings; used by ``mneme interpret`` and ``mneme evaluate``.
    """
    run_path = Path(run_path)
    cfg = run_config(run_path)
    current = getattr(cfg, section)
    merged = {**dataclasses.asdict(current), **changes}
    new_section = build(type(current), merged, section)
    new_cfg = dataclasses.replace(cfg, **{section: new_section})
    new_cfg.validate()
    new_dict = new_cfg.to_dict()

    def edit(m: dict[str, Any]) -> None:
        m["config"][section] = new_dict[section]

    update_manifest(run_path, edit)
    atomic_write_bytes(run_path / "config.yaml", dump_config(new_cfg).encode())
    return new_cfg


def rerun_with(
    run_path: str | Path, section: str, changes: dict[str, Any], stages: Sequence[str], *, progress: bool = True
) -> StudyConfig:
    """Change one section of a run's config (``override_section``) and re-run ``stages``
    with it; the first of them is the one the section belongs to. If that one fails, the
    section goes back to what it was: the study's own config still resumes the run
    (``mneme run STUDY.yaml`` redoes the failed stage and the stale ones after it with the
    settings that made them) instead of being refused as another study. If it finished and
    a later stage failed, its outputs are the new settings' and the new settings stay."""
    run_path = Path(run_path)
    before = read_manifest(run_path).get("config", {}).get(section)
    yaml_path = run_path / "config.yaml"
    yaml_before = yaml_path.read_bytes() if yaml_path.is_file() else None
    cfg = override_section(run_path, section, changes)
    try:
        run_study(cfg, stages=stages, force=True, progress=progress)
    except BaseException:
        if _status(run_path, stages[0]) != "complete":

            def restore(m: dict[str, Any]) -> None:
                m["config"][section] = before

            update_manifest(run_path, restore)
            if yaml_before is not None:
                atomic_write_bytes(yaml_path, yaml_before)
            else:
                yaml_path.unlink(missing_ok=True)
        raise
    return cfg
