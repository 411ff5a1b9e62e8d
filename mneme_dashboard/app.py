"""Dashboard entry script: ``mneme dashboard [RUN_OR_FOLDER ...]`` runs it with Streamlit.

Runs are looked up in the folders given after ``--``, in ``$MNEME_RUNS``
(os.pathsep-separated), then in the demo folder and ``runs/``. The open run travels in
every URL (``?run=...``), so any page can be shared as a link.
"""

from mneme_dashboard import _ui

_ui.setup().run()
