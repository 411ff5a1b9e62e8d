"""MNEME dashboard from a source checkout: `streamlit run app.py [-- RUNS_FOLDER_OR_RUN ...]`.

The dashboard lives in the package (``mneme_dashboard/``: entry script, pages, shared UI
code, Streamlit config) so that an installed MNEME serves it with ``mneme dashboard``;
this file runs that packaged entry script.
"""

import runpy

from mneme_dashboard import ENTRY

runpy.run_path(str(ENTRY))
