"""MNEME dashboard entry point: `streamlit run app.py [-- RUNS_FOLDER_OR_RUN ...]`.

Runs are looked up in the folders given after ``--``, in ``$MNEME_RUNS``
(os.pathsep-separated), then in ``data/demo`` and ``runs/``. The open run travels in
every URL (``?run=...``), so any page can be shared as a link. Pages live in ``pages/``;
the navigation, run picker and caches are in ``pages/_ui.py``.
"""

from pages import _ui

_ui.setup().run()
