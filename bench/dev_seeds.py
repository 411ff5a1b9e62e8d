"""How much of MNEME's prediction is the dictionary's training seed? Development scenario 2's
pair (RMU on the physical sciences, ``bench/dev_rmu.py``; not the demo) retrained at fixed
settings with other seeds.

The demo's README compares builds at different training budgets and reads their changing
predicted sets as instability; this measures it at one budget. Each seed copies the trained
development run (its activation store and benchmark scores are reused: no model runs),
sets ``training.seed`` and re-runs every stage from ``train`` on. Nothing is chosen here:
the settings are the defaults, and every seed is printed.

    python bench/dev_seeds.py [--work ~/.cache/mneme/dev-rmu] [--seeds 1,2]

About 9 minutes a seed on 2 cores. Seed 0 is the run ``bench/dev_rmu.py`` built.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from mneme_core.collect.models import cache_root
from mneme_core.run.pipeline import override_section, run_config, run_study
from mneme_core.run.reader import open_run

RETRAINED = ("train", "diff", "contexts", "interpret", "categories", "evaluate")


def replicate(run: Path, seed: int, work: Path) -> Path:
    """A copy of ``run`` retrained with ``training.seed = seed`` (resumes a finished copy)."""
    copy = work / f"seed{seed}"
    if not (copy / "run.json").is_file():  # the copy's own config points at the copy (run_config)
        partial = copy.with_name(copy.name + ".partial")  # a killed copy never looks finished
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(run, partial, ignore=shutil.ignore_patterns("crosscoder", ".lock"))
        partial.rename(copy)
        run_study(override_section(copy, "training", {"seed": seed}), stages=RETRAINED, force=True)
    else:  # resume: the copy left out the dictionary, so until its own exists every stage is redone
        trained = (copy / "crosscoder" / "model.safetensors").is_file()
        run_study(run_config(copy), stages=RETRAINED, force=False if trained else ["train"])
    return copy


def summary(run: Path) -> dict:
    """What one seed gave: reconstruction, attribution and the prediction with its metrics."""
    r = open_run(run)
    train, diff = r.stage_metrics("train"), r.stage_metrics("diff")
    ev = r.evaluation
    lat = r.latents
    moved = lat[lat["attribution"].isin(["amplified", "suppressed"])]
    return {
        "seed": int(r.manifest["config"]["training"]["seed"]),
        "fve": [round(train["fve_base"], 3), round(train["fve_ft"], 3)],
        "amplified": int(diff["amplified"]),
        "suppressed": int(diff["suppressed"]),
        "attributed_categories": moved["category"].value_counts().to_dict(),
        "T": ev["T"],
        "P": ev["P"],
        "mneme": {k: ev["metrics"]["mneme"][k] for k in ("accuracy", "precision", "f1")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=cache_root() / "dev-rmu")
    ap.add_argument("--seeds", default="1,2")
    args = ap.parse_args()
    run = args.work.resolve() / "runs" / "rmu"
    if not (run / "run.json").is_file():
        raise SystemExit(f"no development run at {run}: run `python bench/dev_rmu.py --work {args.work}` first")
    rows = [summary(run)]
    for seed in (int(s) for s in args.seeds.split(",")):
        rows.append(summary(replicate(run, seed, args.work / "seeds")))
    print(f"T = {rows[0]['T']}")
    print("seed | FVE base   ft | amp sup | attributed by category | MNEME acc prec   F1 | P")
    for r in rows:
        m = r["mneme"]
        fmt = {k: "   —" if v is None else f"{v:4.2f}" for k, v in m.items()}
        print(
            f"{r['seed']:4d} |    {r['fve'][0]:.3f} {r['fve'][1]:.3f} | {r['amplified']:3d} {r['suppressed']:3d} | "
            f"{json.dumps(r['attributed_categories'])[:40]:40s} |     {fmt['accuracy']} {fmt['precision']} "
            f"{fmt['f1']} | {r['P']}"
        )
    (args.work / "seeds.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
