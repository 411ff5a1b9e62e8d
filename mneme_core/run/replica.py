"""A copy of a finished run with some settings changed, re-run from the stage they affect.

The stages before that one are shared, not redone: the activation store is hard-linked
(its files are written once, atomically, and never changed in place), so a retrained copy
costs training and what follows it, not the models' forward passes nor a second store on
disk. Used to ask how much of a run's result is its dictionary's seed (``mneme seeds``)
and by the development benches to compare settings on one collection.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from mneme_core.common.errors import RunError
from mneme_core.run.pipeline import override_section, run_config, run_study
from mneme_core.run.store import (
    LOCK_FILE,
    MANIFEST,
    REPLICAS_DIR,
    SEED_AGREEMENT_FILE,
    STAGES,
    differing_keys,
    set_stage,
    update_manifest,
)

RESTARTS = ("collect", "train")  # the stages a copy can be re-run from
# what a copy never takes from its original: the outputs it rebuilds in its own way
# (LanceDB tables are written in place), an auditor's marks and confirmations, which
# belong to the original's dictionary, and the original's own copies
NOT_COPIED = (
    "crosscoder",
    "lancedb",
    REPLICAS_DIR,
    LOCK_FILE,
    "confirmation*",
    "triage.sqlite",
    SEED_AGREEMENT_FILE,
    "*.partial",
)
STORE_DIR = "activations"


def replica(
    run_path: str | Path,
    copy: str | Path,
    overrides: dict[str, dict[str, Any]],
    first: str = "train",
    *,
    progress: bool = True,
) -> Path:
    """``copy``: ``run_path`` with its config changed by ``overrides`` (section -> changes)
    and every stage from ``first`` on re-run; the earlier stages' outputs (the activation
    store, when ``first`` is ``train``; the benchmark scores) are the original's. Resumes a
    copy that was interrupted and returns a finished one as it is."""
    if first not in RESTARTS:
        raise ValueError(f"a copy re-runs from one of {', '.join(RESTARTS)}, not {first!r}")
    run_path, copy = Path(run_path), Path(copy)
    if (copy / MANIFEST).is_file():
        _check_copy(run_path, copy, overrides)
    else:
        _make_copy(run_path, copy, overrides, first)
    return run_study(run_config(copy), stages=STAGES[STAGES.index(first) :], progress=progress)


def _make_copy(run_path: Path, copy: Path, overrides: dict[str, dict[str, Any]], first: str) -> None:
    """Copy into ``<copy>.partial`` and rename when it is consistent, so an interrupted copy
    never looks like a run; every stage from ``first`` on is marked stale there."""
    partial = copy.with_name(copy.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    skipped = NOT_COPIED + ((STORE_DIR,) if first == "collect" else ())
    shutil.copytree(run_path, partial, ignore=shutil.ignore_patterns(*skipped), copy_function=_link_store)
    config = run_config(run_path).to_dict()  # relative paths resolved from the original's folder

    def own_config(m: dict[str, Any]) -> None:
        m["config"] = {**config, "run_dir": str(copy)}

    update_manifest(partial, own_config)
    for section, changes in overrides.items():
        override_section(partial, section, changes)
    for stage in STAGES[STAGES.index(first) :]:
        set_stage(partial, stage, "stale", info={"reason": f"a copy of {run_path} re-runs it"})
    partial.rename(copy)


def _check_copy(run_path: Path, copy: Path, overrides: dict[str, dict[str, Any]]) -> None:
    """A copy made before the original's settings changed (a re-read with other reading
    settings, say) is not the original with ``overrides`` any more: refuse it by name
    rather than mix two readings."""
    want = run_config(run_path).to_dict()
    for section, changes in overrides.items():
        want[section] = {**want[section], **changes}
    have = run_config(copy).to_dict()
    differ = [k for k in differing_keys(want, have) if k != "run_dir"]
    if differ:
        raise RunError(
            f"{copy} was made with other settings than {run_path} has now (sections differ: {', '.join(differ)}); "
            "delete it to make it again"
        )


def _link_store(src: str, dst: str) -> str:
    """Hard-link the activation store's files (copy where links cannot be made: another
    file system); copy everything else, which later stages may rewrite."""
    if Path(src).parent.name == STORE_DIR:
        try:
            os.link(src, dst)
            return dst
        except OSError:
            pass
    return shutil.copy2(src, dst)
