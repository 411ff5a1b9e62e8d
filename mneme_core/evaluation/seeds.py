"""Seed agreement: which of a run's predictions recur when its dictionary is retrained
with other seeds.

At the scale of a CPU study the side effects a dictionary resolves into latents can
depend on its training seed: on the development pair (docs/DIFFING.md, scenario 14) one
seed predicted the forgotten domain and another, with the same reconstruction to the third
decimal, predicted nothing. A single run cannot show that, so ``mneme seeds RUN`` retrains
the run's cross-coder with other seeds on the same activations (``run.replica``: the store
is shared, every stage from training on re-runs with the run's own reading settings) and
records, per direction, which categories each seed predicts. A prediction every seed makes
belongs to the change; one that comes and goes is partly the draw of the dictionary.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from mneme_core.common.atomic import atomic_write_json
from mneme_core.common.errors import RunError
from mneme_core.evaluation import evaluate as ev
from mneme_core.run.pipeline import run_config
from mneme_core.run.reader import Run, open_run
from mneme_core.run.replica import replica
from mneme_core.run.store import MANIFEST, REPLICAS_DIR, SEED_AGREEMENT_FILE, STORE_DIR

DEFAULT_SEEDS = (1, 2)
_QUALITY = ("fve_base", "fve_ft", "dead_fraction", "l0_over_k")
# what a record's own row must still match in the run for the record to describe it: a
# retrain, a re-read and a re-evaluation each change one of these
_OWN_STATE = ("fve_base", "fve_ft", "amplified", "suppressed", "predicted", "scores")


class SeedAgreementError(RunError):
    """A run cannot be retrained with other seeds (no evaluation, no activation store)."""


def measure(
    run_path: str | Path, seeds: tuple[int, ...] = DEFAULT_SEEDS, work: str | Path | None = None, progress: bool = True
) -> dict[str, Any]:
    """Retrain ``run_path``'s dictionary with each of ``seeds`` (copies under ``work``,
    default ``RUN/seeds``; finished copies are reused, interrupted ones resumed), then
    write and return the agreement record (``seed_agreement.json`` in the run). The record
    holds the run's own seed, the seeds of this call and those an earlier call measured into
    the same work folder whose copies are still there (so `--seeds 1,2` then `--seeds 3`
    compares four dictionaries; delete a copy to leave its seed out)."""
    run_path = Path(run_path)
    run, own_seed = _check_run(run_path)
    if not [s for s in seeds if s != own_seed]:
        raise SeedAgreementError(f"give seeds other than the run's own ({own_seed}), e.g. --seeds 1,2")
    work = _work_folder(run_path, work)
    others = [s for s in dict.fromkeys([*_earlier_seeds(run_path, work), *seeds]) if s != own_seed]
    copies = {
        seed: replica(run_path, work / f"seed{seed}", {"training": {"seed": seed}}, progress=progress)
        for seed in others
    }
    record = {
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_seed": own_seed,
        "seeds": [summarise(run, own_seed)] + [summarise(open_run(path), seed) for seed, path in copies.items()],
        "copies": {str(seed): _named_from(run_path, path) for seed, path in copies.items()},
    }
    atomic_write_json(run_path / SEED_AGREEMENT_FILE, record)
    return record


def _earlier_seeds(run_path: Path, work: Path) -> list[int]:
    """The seeds of the run's earlier record whose copies are still in ``work``."""
    try:
        record = load(run_path)
    except SeedAgreementError:
        return []  # a damaged record is rewritten from this call's seeds
    if record is None:
        return []
    kept = []
    for seed, named in (record.get("copies") or {}).items():
        path = Path(named) if Path(named).is_absolute() else run_path / named
        if (
            str(seed).lstrip("-").isdigit()
            and (path / MANIFEST).is_file()
            and path.resolve() == (work / f"seed{seed}").resolve()
        ):
            kept.append(int(seed))
    return kept


def _work_folder(run_path: Path, work: str | Path | None) -> Path:
    """Where the copies go: ``RUN/seeds`` or a folder outside the run. Another folder
    inside it would be copied into every later copy and pushed with the run."""
    default = run_path / REPLICAS_DIR
    if work is None:
        return default
    work = Path(work)
    inside = work.resolve().is_relative_to(run_path.resolve())
    if inside and work.resolve() != default.resolve():
        raise SeedAgreementError(
            f"--work {work} is inside the run but not its {REPLICAS_DIR}/ folder; leave --work out, or give a "
            "folder outside the run"
        )
    return work


def _named_from(run_path: Path, path: Path) -> str:
    """``path`` from the run folder where it lies inside it (a record that moves with the
    run, and names no local folder), else as it is."""
    try:
        return path.resolve().relative_to(run_path.resolve()).as_posix()
    except ValueError:
        return str(path)


def _check_run(run_path: Path) -> tuple[Run, int]:
    """The run and its own training seed, once it is known the run can be retrained and
    its copies compared with it."""
    if not (run_path / MANIFEST).is_file():
        raise SeedAgreementError(f"no run at {run_path}")
    run = open_run(run_path)
    status = run.stage_status("evaluate")
    if status == "skipped":
        raise SeedAgreementError(
            f"{run_path} has no evaluation (no benchmark was given); run `mneme evaluate RUN --benchmark SPEC` first"
        )
    if status != "complete":
        raise SeedAgreementError(
            f"{run_path}: its evaluate stage is {status}; run the study to the end first (`mneme run STUDY.yaml`)"
        )
    if not (run_path / STORE_DIR / "index.json").is_file():
        raise SeedAgreementError(
            f"{run_path} has no activation store ({STORE_DIR}/); retraining needs it. A published or pulled run "
            "(the demo's, one from the hub) leaves it out: run this on the run that collected it"
        )
    if run.stage_metrics("train").get("imported") is True:
        raise SeedAgreementError(
            f"{run_path} holds an imported cross-coder: it has no training seed of its own to compare others with"
        )
    cfg = run_config(run_path)
    if any(part.strip().isdigit() for part in cfg.interpret.latents.split(",")):
        raise SeedAgreementError(
            f"{run_path} describes a fixed list of latent ids (interpret.latents: {cfg.interpret.latents}), which "
            "name other features in a dictionary trained with another seed; set it to attributed or all first"
        )
    return run, cfg.training.seed


def summarise(run: Run, seed: int) -> dict[str, Any]:
    """One seed's row: its dictionary's quality, how many latents it attributed, and the
    categories it predicts in each direction with MNEME's scores there."""
    trained = run.stage_metrics("train")
    record = run.evaluation or {}
    counts = run.latents["attribution"].value_counts()
    return {
        "seed": seed,
        **{key: trained.get(key) for key in _QUALITY},
        "amplified": int(counts.get("amplified", 0)),
        "suppressed": int(counts.get("suppressed", 0)),
        "predicted": {d: sorted(ev.direction_record(record, d).get("P", [])) for d in _directions(record)},
        "scores": {d: _scores(ev.direction_record(record, d)) for d in _directions(record)},
    }


def _scores(sub: dict[str, Any]) -> dict[str, float | None]:
    """MNEME's accuracy, precision and F1 against the benchmark's T in one direction."""
    mneme = sub.get("metrics", {}).get("mneme", {})
    return {key: mneme.get(key) for key in ("accuracy", "precision", "f1")}


def _directions(record: dict[str, Any]) -> list[str]:
    """The directions an evaluation holds (a record from before ``improved``: degraded only)."""
    return [d for d in ev.DIRECTIONS if d in record.get("directions", {})] or ["degraded"]


def load(run_path: str | Path) -> dict[str, Any] | None:
    """The run's agreement record, or None where ``mneme seeds`` has not run; a damaged
    file is an error that names it."""
    path = Path(run_path) / SEED_AGREEMENT_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        for row in record["seeds"]:
            if not isinstance(row["seed"], int) or not all(isinstance(p, list) for p in row["predicted"].values()):
                raise TypeError(f"seed row {row!r:.80} is not a seed with its predicted categories")
        _ = record["run_seed"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SeedAgreementError(f"{path} is damaged ({exc}); run `mneme seeds RUN` again to rewrite it") from exc
    return record


def agreement_frame(record: dict[str, Any], direction: str) -> pd.DataFrame:
    """One row per category some seed predicts in ``direction``: how many of the seeds
    predict it, and a tick per seed; the most agreed first."""
    rows = record["seeds"]
    sets = {row["seed"]: set(row["predicted"].get(direction, [])) for row in rows}
    categories = sorted(set().union(*sets.values()))
    frame = pd.DataFrame(
        {
            "category": categories,
            "seeds": [sum(c in s for s in sets.values()) for c in categories],
            **{f"seed {seed}": [c in s for c in categories] for seed, s in sets.items()},
        }
    )
    return frame.sort_values(["seeds", "category"], ascending=[False, True], ignore_index=True)


def quality_frame(record: dict[str, Any], direction: str = "degraded") -> pd.DataFrame:
    """Per seed: reconstruction, dead share, L0/k, the latents it attributed and MNEME's F1
    in ``direction``, so a seed that predicts otherwise can be told from one that trained
    worse."""
    keep = ("seed", *_QUALITY, "amplified", "suppressed")
    return pd.DataFrame(
        [
            {**{k: row.get(k) for k in keep}, "f1": row.get("scores", {}).get(direction, {}).get("f1")}
            for row in record["seeds"]
        ]
    )


def not_measured_note(run_path: str | Path) -> str:
    """What the page says where ``mneme seeds`` has not run on this run."""
    return (
        "Predicted from one dictionary seed. At this scale the seed alone can decide whether a change "
        "resolves into enough latents to be predicted. "
        f"`mneme seeds {run_path}` retrains the dictionary with other seeds on the same activations "
        "(on the run folder that holds its activation store) and shows here which predictions recur."
    )


def agreement_note(record: dict[str, Any], direction: str, run: Run | None = None) -> str:
    """One paragraph: which predictions every seed makes, which only some, and, given the
    run, whether the record still describes it."""
    n = len(record["seeds"])
    if any(direction not in row["predicted"] for row in record["seeds"]):
        return "Not measured in this direction: the run's evaluation did not hold it when `mneme seeds` ran."
    frame = agreement_frame(record, direction)
    every = frame.loc[frame["seeds"] == n, "category"].tolist()
    some = [f"{c} ({k} of {n})" for c, k in zip(frame["category"], frame["seeds"]) if k < n]
    if frame.empty:
        parts = [f"None of {n} dictionary seeds predicts a category in this direction."]
    else:
        parts = [
            f"Every one of {n} dictionary seeds predicts: {', '.join(every)}." if every else "",
            f"Only some seeds predict: {', '.join(some)}; those predictions are partly the dictionary's draw."
            if some
            else "",
        ]
    if run is not None and _changed_since(record, run):
        parts.append(
            f"Measured on an earlier state of this run ({record.get('measured', 'date unknown')}): its dictionary, "
            "reading or evaluation changed since; run `mneme seeds` again on the run that collected it."
        )
    return " ".join(p for p in parts if p)


def _changed_since(record: dict[str, Any], run: Run) -> bool:
    """Whether the record's row for the run's own seed no longer matches the run (compared
    on what a copied or published run keeps unchanged)."""
    own = next((row for row in record["seeds"] if row["seed"] == record["run_seed"]), None)
    if own is None:
        return True
    now = summarise(run, record["run_seed"])
    return any(own.get(key) != now.get(key) for key in _OWN_STATE)
