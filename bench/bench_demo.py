"""Time the whole demo rebuild (target: ≤ 60 minutes on 2 CPU cores), step by step.

    python bench/bench_demo.py [--reduced] [--work DIR] [--out DIR] [--threads N]

Builds into a fresh work folder (default: a temp dir, so nothing cached is reused) and
publishes into ``--out`` (default: a temp dir; pass ``data/demo`` to refresh the committed
demo). Prints seconds per step, the total, and the ratio to the 60-minute budget. Run it
on a quiet machine: on a shared CPU the figures are upper bounds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mneme_core.demo.build import rebuild
from mneme_core.demo.study import FULL, REDUCED

BUDGET_S = 60 * 60


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reduced", action="store_true", help="toy sizes (the slow test's), not the committed study")
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: fresh temp dir)")
    ap.add_argument("--out", type=Path, default=None, help="publish folder (default: temp dir)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp) / "work"
        out = args.out or Path(tmp) / "data" / "demo"
        t0 = time.perf_counter()
        summary = rebuild(sizes=REDUCED if args.reduced else FULL, work=work, out=out)
        total = time.perf_counter() - t0
    print(f"\ndemo rebuild ({'reduced' if args.reduced else 'full'}), torch threads {torch.get_num_threads()}:")
    for step, seconds in summary["seconds"].items():
        print(f"  {step:24s} {seconds:8.1f} s")
    print(f"  {'total':24s} {total:8.1f} s = {total / 60:.1f} min; {total / BUDGET_S:.2f} x the 60-min budget")


if __name__ == "__main__":
    main()
