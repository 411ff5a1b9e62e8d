"""MNEME dashboard entry point: `streamlit run app.py [-- RUNS_FOLDER_OR_RUN ...]`.

Runs are looked up in the folders given after ``--``, in ``$MNEME_RUNS``
(os.pathsep-separated), then in ``data/demo`` and ``runs/``. The open run travels in
every URL (``?run=...``), so any page can be shared as a link.
"""

import streamlit as st

from pages import _ui

st.set_page_config(page_title="MNEME", page_icon=":material/compare_arrows:", layout="wide")

PAGES = {
    "Study": [
        st.Page(_ui.PAGE_FILES["overview"], title="Overview", icon=":material/dashboard:", url_path="overview",
                default=True),
        st.Page(_ui.PAGE_FILES["side_effects"], title="Side effects", icon=":material/warning:",
                url_path="side_effects"),
    ],
    "Latents": [
        st.Page(_ui.PAGE_FILES["explorer"], title="Latent explorer", icon=":material/table_rows:",
                url_path="explorer"),
        st.Page(_ui.PAGE_FILES["latent"], title="Latent", icon=":material/neurology:", url_path="latent"),
        st.Page(_ui.PAGE_FILES["distributions"], title="Diff distributions", icon=":material/bar_chart:",
                url_path="distributions"),
        st.Page(_ui.PAGE_FILES["categories"], title="Category map", icon=":material/scatter_plot:",
                url_path="category_map"),
    ],
    "Audit": [
        st.Page(_ui.PAGE_FILES["triage"], title="Triage", icon=":material/fact_check:", url_path="triage"),
        st.Page(_ui.PAGE_FILES["prompt_lab"], title="Prompt lab", icon=":material/science:", url_path="prompt_lab"),
    ],
}

page = st.navigation(PAGES)
_ui.keep_filters()
_ui.selected_run_path()
_ui.run_picker()
page.run()
