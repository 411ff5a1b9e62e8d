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

from filelock import FileLock

from mneme_core.common.errors import RunError
from mneme_core.run.pipeline import override_section, run_config, run_study
from mneme_core.run.store import (
    LOCK_FILE,
    MANIFEST,
    REPLICAS_DIR,
    SEED_AGREEMENT_FILE,
    STAGES,
    STORE_DIR,
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
    "triage.sqlite*",
    SEED_AGREEMENT_FILE,
    "*.partial",
    "*.lock",
)
# the config sections read only after training, with the stage each is first read by: a
# copy whose original changed one of these since is brought up to date from that stage
# instead of being retrained
READ_AFTER_TRAINING = {
    "diffing": "diff",
    "contexts": "contexts",
    "interpret": "interpret",
    "categories": "categories",
    "evaluation": "evaluate",
}
# what collection reads: a copy from ``train`` on shares the store instead, so its identity
# (the store's index) is compared rather than these sections' paths
COLLECTED_FROM = ("models", "corpus", "activations")


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
    copy that was interrupted, returns a finished one as it is, and re-reads one whose
    original's reading settings changed since (``READ_AFTER_TRAINING``)."""
    if first not in RESTARTS:
        raise ValueError(f"a copy re-runs from one of {', '.join(RESTARTS)}, not {first!r}")
    run_path, copy = Path(run_path), Path(copy)
    copy.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(copy) + ".lock"):  # two processes must not build one copy
        if (copy / MANIFEST).is_file():
            forced = _bring_up_to_date(run_path, copy, overrides, first)
        elif copy.exists():
            raise RunError(f"{copy} exists but holds no run; delete it, or give another place for the copy")
        else:
            _make_copy(run_path, copy, overrides, first)
            forced = []
        stages = STAGES[STAGES.index(first) :]
        return run_study(run_config(copy), stages=stages, force=forced, progress=progress)


def _make_copy(run_path: Path, copy: Path, overrides: dict[str, dict[str, Any]], first: str) -> None:
    """Copy into ``<copy>.partial`` and rename when it is consistent, so an interrupted copy
    never looks like a run; every stage from ``first`` on is marked stale there."""
    partial = copy.with_name(copy.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(run_path, partial, ignore=shutil.ignore_patterns(*NOT_COPIED, STORE_DIR))
    if first == "train":
        _share_store(run_path / STORE_DIR, partial / STORE_DIR)
    config = run_config(run_path).to_dict()  # relative paths resolved from the original's folder

    def own_config(m: dict[str, Any]) -> None:
        m["config"] = {**config, "run_dir": str(copy)}
        m["name"] = f"{m.get('name', run_path.name)} · {copy.name}"  # told apart where runs are listed

    update_manifest(partial, own_config)
    for section, changes in overrides.items():
        override_section(partial, section, changes)
    for stage in STAGES[STAGES.index(first) :]:
        set_stage(partial, stage, "stale", info={"reason": f"a copy of {run_path} re-runs it"})
    partial.rename(copy)


def _share_store(store: Path, into: Path) -> None:
    """The original's activation store in the copy without a second copy of it: a
    symbolic link where the store is one (it lives on another disk), else hard links to
    its files (read-only once collected, and rewritten only atomically, which gives the
    rewritten file a new inode and leaves the other side's alone)."""
    if store.is_symlink():
        into.symlink_to(store.resolve(), target_is_directory=True)
        return
    into.mkdir()
    for path in store.iterdir():
        try:
            os.link(path, into / path.name)
        except OSError as exc:
            raise RunError(
                f"cannot hard-link {path} into {into} ({exc.strerror}); put the copies on the run's own file "
                "system (the default, inside the run) rather than copy its activation store"
            ) from exc


def _bring_up_to_date(run_path: Path, copy: Path, overrides: dict[str, dict[str, Any]], first: str) -> list[str]:
    """The stages a finished copy must re-run so that it is still the original with
    ``overrides``: re-apply reading settings the original changed since; refuse a copy
    whose collection or training settings, or whose activation store, are not the
    original's any more, rather than mix two studies."""
    want = run_config(run_path).to_dict()
    for section, changes in overrides.items():
        want[section] = {**want[section], **changes}
    have = run_config(copy).to_dict()
    differ = [k for k in differing_keys(want, have) if k != "run_dir"]
    if first == "train":
        differ = [k for k in differ if k not in COLLECTED_FROM]
        if _store_index(run_path) != _store_index(copy):
            differ.append("the activation store (collected again since)")
    reread = [k for k in differ if k in READ_AFTER_TRAINING]
    refused = [k for k in differ if k not in READ_AFTER_TRAINING]
    if refused:
        raise RunError(
            f"{copy} was made from other settings or data than {run_path} has now ({', '.join(refused)} differ); "
            "delete it to make it again"
        )
    for section in reread:
        override_section(copy, section, want[section])
    return [READ_AFTER_TRAINING[k] for k in reread]


def _store_index(run_path: Path) -> bytes:
    """The activation store's index: which shards, tokens and settings it holds."""
    path = run_path / STORE_DIR / "index.json"
    return path.read_bytes() if path.is_file() else b""
