"""The MNEME dashboard: Streamlit pages over the engine's run folders.

It ships inside the installed package (entry script, pages and its Streamlit config), so
``mneme dashboard RUN`` serves it from a wheel as well as from a source checkout. This
module imports no Streamlit: the CLI only needs to know where the entry script is.

Layout: ``app.py`` is the entry Streamlit runs; ``pages/`` the pages; ``_ui.py`` the
navigation, run picker and caches they share; ``.streamlit/config.toml`` the settings
Streamlit reads beside the entry script (localhost only, no telemetry, no file watcher).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

ENTRY = Path(__file__).resolve().with_name("app.py")


def serve(roots: Sequence[str | Path] = ()) -> NoReturn:
    """Become ``streamlit run`` of the dashboard on runs (or folders of runs).

    The process is replaced rather than waited on, so a stop signal (a service manager, a
    test) reaches Streamlit itself and never leaves it running without its parent.
    """
    cmd = [sys.executable, "-m", "streamlit", "run", str(ENTRY), *(["--", *map(str, roots)] if roots else [])]
    sys.stdout.flush()
    os.execv(cmd[0], cmd)
