"""Print the demo's results table (README "The demo study") from the committed runs.

Per run: cross-coder quality (held-out FVE per model, dead fraction, L0/k, median decoder
cosine of the shared latents), attribution counts, and the prediction with its controls
(MNEME, the dictionary-free activation-difference baseline, random, naive, oracle); where
``mneme seeds`` ran on a run, each dictionary seed's quality and degraded-direction prediction.
Run: ``python bench/demo_results.py [data/demo]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mneme_core.evaluation import seeds
from mneme_core.run.reader import open_run


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.2f}"


def main(demo: Path) -> None:
    runs = sorted(p.parent for p in demo.glob("*/run.json"))
    print(
        "| run | FVE base / ft | dead (all tokens) | silent on held-out | L0/k | median cos (shared) "
        "| amplified | suppressed | predicted P |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    records = {}
    for path in runs:
        run = open_run(path)
        tm = run.stage_metrics("train")
        lat = run.latents
        shared = lat["label_by_norm"] == "shared"
        counts = lat["attribution"].value_counts()
        ev = run.evaluation or {}
        records[path.name] = ev
        print(
            f"| {path.name} | {tm.get('fve_base', float('nan')):.3f} / {tm.get('fve_ft', float('nan')):.3f} "
            f"| {float((lat['freq'] == 0).mean()):.1%} | {tm.get('dead_fraction', float('nan')):.1%} "
            f"| {tm.get('l0_over_k', float('nan')):.2f} "
            f"| {float(np.median(lat.loc[shared, 'dec_cos'])) if shared.any() else float('nan'):.3f} "
            f"| {int(counts.get('amplified', 0))} | {int(counts.get('suppressed', 0))} "
            f"| {', '.join(ev.get('P', [])) or '∅'} |"
        )
    print()
    benches = {name: open_run(demo / name).benchmark for name in records if open_run(demo / name).benchmark is not None}
    if benches:
        names = list(benches)
        first = benches[names[0]].set_index("category")
        changed = sorted(set().union(*(set(b.loc[b["degraded"], "category"]) for b in benches.values())))
        print("| subject | base | " + " | ".join(names) + " | degraded in |")
        print("|---|---|" + "---|" * len(names) + "---|")
        for cat in changed:
            after = [f"{benches[n].set_index('category').loc[cat, 'score_after']:.2f}" for n in names]
            where = [n for n in names if bool(benches[n].set_index("category").loc[cat, "degraded"])]
            print(f"| {cat} | {first.loc[cat, 'score_before']:.2f} | " + " | ".join(after) + f" | {', '.join(where)} |")
        print(f"| {len(first) - len(changed)} other subjects | |" + " |" * len(names) + " none |")
        print()
    print("| run | direction | method | accuracy | precision | F1 | balanced acc. | set |")
    print("|---|---|---|---|---|---|---|---|")
    for name, ev in records.items():
        # the degraded direction is the record's top level; newer records hold both under "directions"
        for direction, sub in (ev.get("directions") or {"degraded": ev}).items():
            m = sub.get("metrics", {})
            print(f"| {name} | {direction} | T | | | | | {', '.join(sub.get('T', [])) or '∅'} |")
            for method in ("mneme", "activation_diff", "naive", "random", "oracle"):
                r = m.get(method, {})
                if "skipped" in r or not r:
                    continue
                get = (lambda k, r=r: (r.get(k) or {}).get("mean")) if method == "random" else r.get
                shown = ", ".join(r.get("set", [])) if method != "random" else "Bernoulli(0.5)"
                print(
                    f"| {name} | {direction} | {method} | {_fmt(get('accuracy'))} | {_fmt(get('precision'))} "
                    f"| {_fmt(get('f1'))} | {_fmt(get('balanced_accuracy'))} | {shown or '∅'} |"
                )
    print_seed_agreement(runs)


def print_seed_agreement(runs: list[Path]) -> None:
    """Per run and dictionary seed: FVE, attributed latents, the degraded prediction."""
    measured = {path.name: seeds.load(path) for path in runs}
    measured = {name: record for name, record in measured.items() if record}
    if not measured:
        return
    print()
    print("| run | seed | FVE base / ft | amplified / suppressed | predicted (degraded) | accuracy / precision / F1 |")
    print("|---|---|---|---|---|---|")
    for name, record in measured.items():
        for row in record["seeds"]:
            print(
                f"| {name} | {row['seed']} | {row['fve_base']:.3f} / {row['fve_ft']:.3f} "
                f"| {row['amplified']} / {row['suppressed']} | {', '.join(row['predicted']['degraded']) or '∅'} "
                f"| {' / '.join(_fmt(row['scores']['degraded'][k]) for k in ('accuracy', 'precision', 'f1'))} |"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "data/demo"))
