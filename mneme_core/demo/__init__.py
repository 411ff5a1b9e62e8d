"""The bundled demo study: SmolLM2-135M-Instruct, RMU-unlearned on biology & medicine, offline.

``mneme demo`` opens the dashboard on the committed runs in ``data/demo/`` (no model
needed); ``mneme demo --rebuild`` reproduces them from the Debian text packages and the
packaged base model (``build.rebuild``); ``mneme demo --refresh`` re-runs only the last
two stages with the current settings (``build.refresh``). Parts:

- ``sources``: WordNet / KJV Bible / Devil's Dictionary readers + provenance;
- ``subjects``: the knowledge domains (WordNet rules), the forget domain;
- ``benchmark``: the per-subject multiple-choice test generated from WordNet;
- ``split``: the disjoint forget / retain / neutral / benchmark split, documents;
- ``study``: sizes, the two RMU settings and the MNEME config;
- ``build``: the resumable rebuild and the publish step.
"""

from __future__ import annotations

import sys

from mneme_core.demo import build
from mneme_core.demo.build import default_demo_dir
from mneme_core.demo.study import INTERVENTIONS

__all__ = ["main", "build", "default_demo_dir"]


def main(rebuild: bool = False, refresh: bool = False) -> int:
    """Entry point of ``mneme demo [--rebuild | --refresh]``: (rebuild or refresh, then)
    open the dashboard."""
    demo_dir = default_demo_dir()
    if rebuild:
        summary = build.rebuild()
        print(f"demo rebuilt into {demo_dir} in {summary['seconds_total'] / 60:.1f} min")
    elif refresh:
        seconds = build.refresh()
        print(f"demo runs {', '.join(seconds)} re-read in {sum(seconds.values()) / 60:.1f} min")
    runs = [demo_dir / name for name in INTERVENTIONS if (demo_dir / name / "run.json").is_file()]
    if not runs:
        print(
            f"no demo run in {demo_dir}; build it with `mneme demo --rebuild` (about an hour on 2 CPU cores)",
            file=sys.stderr,
        )
        return 1
    from mneme_dashboard import serve

    serve([demo_dir])
