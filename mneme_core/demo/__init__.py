"""The bundled demo study: SmolLM2-135M-Instruct, RMU-unlearned on biology & medicine, and
LoRA-fine-tuned on one other subject, offline.

``mneme demo`` opens the dashboard on the committed runs in ``data/demo/`` (no model
needed); ``mneme demo --rebuild`` reproduces them from the Debian text packages and the
packaged base model (``build.rebuild``); ``mneme demo --refresh`` re-runs only the last
two stages with the current settings (``build.refresh``). Parts:

- ``sources``: WordNet / KJV Bible / Devil's Dictionary readers + provenance;
- ``subjects``: the knowledge domains (WordNet rules), the forget domain;
- ``benchmark``: the per-subject multiple-choice test generated from WordNet;
- ``split``: the disjoint forget / retain / neutral / benchmark split, documents;
- ``study``: sizes, the two RMU settings, the LoRA fine-tune and the MNEME config;
- ``build``: the resumable rebuild and the publish step.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mneme_core.common.config import Precision
from mneme_core.demo import build
from mneme_core.demo.build import default_demo_dir
from mneme_core.demo.study import FINETUNES, INTERVENTIONS, NULL_RUN

__all__ = ["main", "build", "default_demo_dir"]


def rebuild_plan(runs: Sequence[str] | None) -> tuple[list[str] | None, bool]:
    """``--runs`` as ``rebuild``'s (names, null_control): None = every run. The null control
    reuses the first RMU run's base activations, so asking for it alone builds that run too."""
    if not runs:
        return None, True
    names = [n for n in runs if n != NULL_RUN] or [next(iter(INTERVENTIONS))]
    return names, NULL_RUN in runs


def main(
    rebuild: bool = False,
    refresh: bool = False,
    runs: Sequence[str] | None = None,
    serve_after: bool = True,
    precision: Precision | None = None,
) -> int:
    """Entry point of ``mneme demo [--rebuild [--precision P] | --refresh] [--runs NAMES]
    [--no-serve]``: (rebuild or refresh, then) open the dashboard. ``runs`` limits a rebuild
    or refresh to those runs; ``serve_after=False`` stops after them (scripts, benches, CI);
    ``precision`` overrides the rebuild's (None: ``DemoSizes.precision``, ``auto``, or what
    a resumed build began with)."""
    demo_dir = default_demo_dir()
    if rebuild:
        names, null_control = rebuild_plan(runs)
        summary = build.rebuild(names=names, null_control=null_control, precision=precision)
        print(f"demo rebuilt into {demo_dir} in {summary['seconds_total'] / 60:.1f} min")
    elif refresh:
        seconds = build.refresh(names=list(runs) if runs else None)
        print(f"demo runs {', '.join(seconds)} re-read in {sum(seconds.values()) / 60:.1f} min")
    if not serve_after:
        return 0
    found = [name for name in [*INTERVENTIONS, *FINETUNES] if (demo_dir / name / "run.json").is_file()]
    if not found:
        print(
            f"no demo run in {demo_dir}; build it with `mneme demo --rebuild` (about an hour on 2 CPU cores)",
            file=sys.stderr,
        )
        return 1
    from mneme_dashboard import serve

    serve([demo_dir])
