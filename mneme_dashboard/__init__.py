"""The MNEME dashboard: Streamlit pages over the engine's run folders.

It ships inside the installed package (entry script, pages and its Streamlit config), so
``mneme dashboard RUN`` serves it from a wheel as well as from a source checkout. This
module imports no Streamlit: the CLI only needs to know where the entry script is.

Layout: ``app.py`` is the entry Streamlit runs; ``pages/`` the pages; ``_ui.py`` the
navigation, run picker and caches they share; ``.streamlit/config.toml`` the settings
Streamlit reads beside the entry script (localhost only, no telemetry, no file watcher).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

ENTRY = Path(__file__).resolve().with_name("app.py")


def streamlit_command(roots: Sequence[str | Path] = ()) -> list[str]:
    """The ``streamlit run`` command line serving the dashboard on runs (or folders of runs)."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(ENTRY)]
    return cmd + (["--", *map(str, roots)] if roots else [])
