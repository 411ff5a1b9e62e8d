"""Development scenario 2: RMU on another forget set, built with the demo's machinery.

The demo unlearns biology and medicine and its benchmark is a test set. This scenario
unlearns the physical sciences instead (``demo.study.DEV``: chemistry, physics,
materials, weather) with the same text sources, split rule, RMU settings, sizes and
MNEME pipeline, and then asks the two questions the demo left open:

- **which latents to read for unlearning**: suppressed (the paper's reading), amplified
  (RMU adds a steering direction on forget-domain text, which a cross-coder can show as
  latents the fine-tuned model carries more of), or both;
- **which taxonomy** to categorise latents with: the MMLU subject list (what the demo
  used) or MNEME's own topic list (the project default), each with the safety behaviours.

Every combination relabels the same trained run (the categories and evaluation stages
re-run; nothing upstream changes) and prints MNEME's metrics beside the random, naive and
dictionary-free baselines of the same run. The rule, written before the first run of
this scenario: take the combination with the highest MNEME F1 here; on a tie the higher
precision; on a further tie the project's defaults (topics taxonomy, suppressed). That
choice is then fixed for the demo, whatever the demo gives. Run from the project root
(about 25 minutes on 2 cores; resumable):

    python bench/dev_rmu.py [--work ~/.cache/mneme/dev-rmu]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from mneme_core.analysis.diffing import attribution_labels
from mneme_core.collect.models import cache_root
from mneme_core.common.config import DiffingConfig, EvaluationConfig
from mneme_core.demo.build import apply_reading_settings, rebuild
from mneme_core.demo.study import DEV, FULL
from mneme_core.run.pipeline import override_section, run_config, run_study
from mneme_core.run.store import merge_latent_columns

# the chosen reading (topics + safety, both; study.reading_settings) last: the run ends as built
TAXONOMIES = {"mmlu+safety": ["mmlu", "safety"], "topics+safety": ["topics", "safety"]}
DIRECTIONS = ("suppressed", "amplified", "both")
# When to believe a shift, asked after the reading was fixed: the band τ and the
# significance z, at the evidence floor's default (50 tokens). Only values the planted
# scenario (bench/dev_scenario.py) showed clean on both nulls are on the grid; the default
# (τ 0.5, z 3) last, so the run ends as built.
SHIFT_GRID = [(0.25, 2.0), (0.25, 3.0), (0.5, 2.0), (0.5, 3.0)]


def _fmt(x: float | None) -> str:
    return "   —" if x is None else f"{x:4.2f}"


def grid(run: Path) -> list[dict]:
    """MNEME and baselines for every (taxonomy, latent direction) on one trained run. The
    last combination is the run's own setting (the demo's), so the run ends as built and
    the build can resume it."""
    try:
        return _relabel_each(run)
    finally:
        restore(run)


def restore(run: Path) -> None:
    """The run back to what the build wrote: the scenario's reading settings and the
    default of every setting a grid below changes. A grid that ends normally has already
    put them back, so nothing more happens; one that was killed or failed left its last
    value (and the build would refuse the run as built with another config), so the
    latents are relabelled at the default (τ, z) and the categories and evaluate stages,
    still marked complete but written at that other value, are redone."""
    before = run_config(run).to_dict()
    apply_reading_settings(run, null=False, scenario=DEV)
    defaults = EvaluationConfig()
    override_section(
        run,
        "evaluation",
        {"predict_score": defaults.predict_score, "baseline_min_ratio": defaults.baseline_min_ratio},
    )
    override_section(run, "diffing", {"tau": DiffingConfig().tau, "z": DiffingConfig().z})
    if run_config(run).to_dict() != before and (run / "latents.parquet").is_file():
        _relabel(run, DiffingConfig().tau, DiffingConfig().z)
        run_study(run_config(run), stages=["categories", "evaluate"], force=True, progress=False)


def _relabel(run: Path, tau: float, z: float) -> pd.Series:
    """Attribution labels at (τ, z), every other diffing setting the run's own, from the β
    and standard errors the diff stage stored (nothing is re-measured), written into the
    run and its config (the config first: a run killed between the two shows a config that
    differs from the build's, which ``restore`` repairs); returns them."""
    dcfg = override_section(run, "diffing", {"tau": tau, "z": z}).diffing
    table = pd.read_parquet(run / "latents.parquet")
    labels = attribution_labels(
        table["beta_base"], table["beta_ft"], table["beta_se_base"], table["beta_se_ft"], table["n_fires"], dcfg
    )
    merge_latent_columns(run, pd.DataFrame({"latent": table["latent"], "attribution": labels["attribution"]}))
    return labels["attribution"]


def _relabel_each(run: Path) -> list[dict]:
    rows = []
    for tax_name, taxonomies in TAXONOMIES.items():
        override_section(run, "categories", {"taxonomies": taxonomies})
        for direction in DIRECTIONS:
            cfg = override_section(run, "evaluation", {"latent_direction": direction})
            stages = ["categories", "evaluate"] if direction == DIRECTIONS[0] else ["evaluate"]
            run_study(cfg, stages=stages, force=True, progress=False)
            ev = json.loads((run / "evaluation.json").read_text())
            m = ev["metrics"]
            rows.append(
                {
                    "taxonomy": tax_name,
                    "direction": direction,
                    "T": ev["T"],
                    "P": ev["P"],
                    "mneme": {k: m["mneme"][k] for k in ("accuracy", "precision", "f1")},
                    "actdiff": {k: m["activation_diff"][k] for k in ("accuracy", "precision", "f1")},
                    "actdiff_set": m["activation_diff"]["set"],
                    "naive_set": m["naive"]["set"],
                    "naive_f1": m["naive"]["f1"],
                    "random_acc": m["random"]["accuracy"]["mean"],
                    "random_f1": m["random"]["f1"]["mean"],
                }
            )
    return rows


def shift_grid(run: Path) -> list[dict]:
    """MNEME's prediction for every (τ, z) of ``SHIFT_GRID``: the latents are relabelled
    from the β and standard errors the diff stage stored (nothing is re-measured), then
    the evaluate stage re-runs. The rule, written before the first run of this grid: the
    highest MNEME F1; on a tie the higher precision; on a further tie the default."""
    rows = []
    for tau, z in SHIFT_GRID:
        counts = _relabel(run, tau, z).value_counts()
        run_study(run_config(run), stages=["evaluate"], force=True, progress=False)
        ev = json.loads((run / "evaluation.json").read_text())
        m = ev["metrics"]
        rows.append(
            {
                "tau": tau,
                "z": z,
                "amplified": int(counts.get("amplified", 0)),
                "suppressed": int(counts.get("suppressed", 0)),
                "T": ev["T"],
                "P": ev["P"],
                "mneme": {k: m["mneme"][k] for k in ("accuracy", "precision", "f1")},
                "naive_f1": m["naive"]["f1"],
            }
        )
    return rows


# How a category's latents become a prediction (``evaluation.predict_score``): the
# enrichment test on counts (the default), or the category's share of Σ|shift| or of the
# count over the mean share 1 / K — asked after the reading and (τ, z) were fixed — and,
# from development scenario 6, ``rank``: every eligible latent's shift, no label needed, a
# Mann–Whitney test of "this category's latents moved more than the rest" (the
# dictionary-free baseline's test, on latents instead of contexts).
SCORE_GRID = ("shift", "count", "rank", "enrichment")


def score_grid(run: Path) -> list[dict]:
    """MNEME's prediction under each ``SCORE_GRID`` statistic (only the evaluate stage
    re-runs). The rule, written before the first run of this grid: the highest MNEME F1; on
    a tie the higher precision; on a further tie the default (enrichment). The default is
    last, so the run ends as built. ``rank`` joined the grid in development scenario 6
    under the same rule, written before its first run: if it wins, it becomes the default
    and the demo's committed runs are re-read with it once (``mneme demo --refresh``)."""
    rows = []
    for score in SCORE_GRID:
        cfg = override_section(run, "evaluation", {"predict_score": score})
        run_study(cfg, stages=["evaluate"], force=True, progress=False)
        ev = json.loads((run / "evaluation.json").read_text())
        m = ev["metrics"]
        rows.append(
            {
                "score": score,
                "T": ev["T"],
                "P": ev["P"],
                "mneme": {k: m["mneme"][k] for k in ("accuracy", "precision", "f1")},
                "naive_f1": m["naive"]["f1"],
                "n_attributed": int(sum(r["n_latents"] for r in ev["category_scores"])),
            }
        )
    return rows


# The dictionary-free baseline's effect floor (development scenario 7,
# ``evaluation.baseline_min_ratio``): √2, the factor of MNEME's own band (τ = 0.5), so a
# category's contexts must have moved √2 times as much as the other contexts on average,
# against 0 (no floor: the rank test alone, the default until this grid chose √2). The
# default last, so the run ends as built.
BASELINE_GRID = (0.0, 2**0.5)


def baseline_grid(run: Path) -> list[dict]:
    """The dictionary-free baseline under each ``BASELINE_GRID`` floor (only the evaluate
    stage re-runs; MNEME's figures do not move). The rule, written before the first run of
    this grid: the higher baseline F1 on this pair; on a tie the higher precision; on a
    further tie the default at the time (0, no floor). If √2 wins it becomes the default and the demo's
    committed runs are re-evaluated with it once (the evaluate stage only), with the old
    rule's figures reported beside the new."""
    rows = []
    try:
        for ratio in BASELINE_GRID:
            cfg = override_section(run, "evaluation", {"baseline_min_ratio": ratio})
            run_study(cfg, stages=["evaluate"], force=True, progress=False)
            ev = json.loads((run / "evaluation.json").read_text())
            ad = ev["metrics"]["activation_diff"]
            rows.append(
                {
                    "min_ratio": ratio,
                    "T": ev["T"],
                    "P": ad["set"],
                    "actdiff": {k: ad[k] for k in ("accuracy", "precision", "f1")},
                    "ratios": {r["category"]: r["ratio"] for r in ad["per_category"] if r["category"] in ad["set"]},
                }
            )
    finally:
        restore(run)
    return rows


def _print_baseline(rows: list[dict], path: Path) -> None:
    """Print the baseline grid (its metrics and each predicted category's ratio) and save it."""
    print(f"{'min ratio':>9s} | act-diff acc prec   F1 | P (ratio)")
    for r in rows:
        ad = r["actdiff"]
        ratios = {c: "—" if v is None else f"{v:.2f}" for c, v in r["ratios"].items()}  # None: the rest never moved
        named = ", ".join(f"{c} ({ratios[c]})" for c in r["P"])
        print(f"{r['min_ratio']:9.3f} |     {_fmt(ad['accuracy'])} {_fmt(ad['precision'])} {_fmt(ad['f1'])} | {named}")
    path.write_text(json.dumps(rows, indent=1))


def build_pair(work: Path, **options: Any) -> tuple[Path, dict]:
    """The development pair's study at the defaults, built in ``work`` (or resumed there):
    its run folder and the build's summary. ``options`` go to the build (``precision``).
    The pair stays float32, as every development scenario measured it, whatever the
    demo's own precision is."""
    summary = rebuild(
        sizes=replace(FULL, precision="float32"),
        work=work,
        out=work / "published",
        names=["rmu"],
        null_control=False,
        confirm=False,
        scenario=DEV,
        **options,
    )
    return work / "runs" / "rmu", summary


def pair_from_command_line(doc: str) -> tuple[Path, Path]:
    """For a development bench whose only option is ``--work``: that folder and the
    development pair's run built (or resumed) in it."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=cache_root() / "dev-rmu")
    work = ap.parse_args().work.resolve()
    return work, build_pair(work)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=cache_root() / "dev-rmu")
    ap.add_argument("--only", choices=["baseline"], help="only this grid (on the built pair)")
    args = ap.parse_args()
    run = args.work.resolve() / "runs" / "rmu"
    if (run / "run.json").is_file():
        restore(run)  # an interrupted grid leaves another reading in the config and outputs
    summary = build_pair(args.work)[1]
    if args.only == "baseline":
        _print_baseline(baseline_grid(run), args.work / "baseline_grid.json")
        return
    study = json.loads((run / "run.json").read_text())["stages"]
    print(f"scenario {DEV.name}: forget {sorted(DEV.forget_subjects)}; build {summary['seconds_total']:.0f} s")
    for stage in ("train", "diff"):
        print(
            f"  {stage}: "
            + json.dumps({k: v for k, v in study[stage]["metrics"].items() if not isinstance(v, (dict, list))})[:400]
        )
    rows = grid(run)
    print(f"T = {rows[0]['T']}")
    print(
        f"{'taxonomy':14s} {'direction':10s} | MNEME acc prec   F1 | act-diff acc prec  F1 | "
        f"random acc F1 | naive F1 | P"
    )
    for r in rows:
        mn, ad = r["mneme"], r["actdiff"]
        print(
            f"{r['taxonomy']:14s} {r['direction']:10s} |     {_fmt(mn['accuracy'])} {_fmt(mn['precision'])} "
            f"{_fmt(mn['f1'])} |     {_fmt(ad['accuracy'])} {_fmt(ad['precision'])} {_fmt(ad['f1'])} | "
            f"   {_fmt(r['random_acc'])} {_fmt(r['random_f1'])} |     {_fmt(r['naive_f1'])} | {r['P']}"
        )
    for r in rows[:: len(DIRECTIONS)]:
        print(f"{r['taxonomy']}: activation-diff set {r['actdiff_set']}; naive set {r['naive_set']}")
    (args.work / "grid.json").write_text(json.dumps(rows, indent=1))
    _report(
        f"{'tau':>5s} {'z':>4s} | amplified suppressed",
        shift_grid(run),
        lambda r: f"{r['tau']:5.2f} {r['z']:4.1f} | {r['amplified']:9d} {r['suppressed']:10d}",
        args.work / "shift_grid.json",
    )
    _report(
        f"{'score':>10s} | attributed",
        score_grid(run),
        lambda r: f"{r['score']:>10s} | {r['n_attributed']:10d}",
        args.work / "score_grid.json",
    )
    _print_baseline(baseline_grid(run), args.work / "baseline_grid.json")


def _report(head: str, rows: list[dict], label: Callable[[dict], str], path: Path) -> None:
    """Print one grid (its own columns, then MNEME's metrics, naive F1 and P) and save it."""
    print(f"{head} | MNEME acc prec   F1 | naive F1 | P")
    for r in rows:
        mn = r["mneme"]
        print(
            f"{label(r)} |     {_fmt(mn['accuracy'])} {_fmt(mn['precision'])} {_fmt(mn['f1'])} |"
            f"     {_fmt(r['naive_f1'])} | {r['P']}"
        )
    path.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
