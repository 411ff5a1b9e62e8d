"""Streamlit glue shared by the pages: which run is open, cached loaders, empty states.

The engine (``mneme_core``) never imports Streamlit; this module is the only place that
knows both. Caches are keyed on the run path plus the manifest's mtime, so a stage
finishing (which rewrites ``run.json``) invalidates them, and a filter change reuses
them. The latents table and models are ``cache_resource`` (shared, never copied: a
131k-row table copied on every rerun would cost more than the filter itself);
per-latent tables and figures are ``cache_data``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from mneme_core import Run, RunError, open_run
from mneme_core.common.config import MANIFEST
from mneme_core.run.store import STAGES
from mneme_core.views import render

APP_DIR = Path(__file__).resolve().parent.parent
# A checkout's demo (a wheel ships none), and runs/ where `mneme run` writes by default.
DEFAULT_ROOTS = (APP_DIR / "data" / "demo", Path("runs"))
# Absolute, so the same pages serve the packaged entry script and a checkout's app.py.
PAGES_DIR = Path(__file__).resolve().parent / "pages"
PAGE_FILES = {
    key: str(PAGES_DIR / f"{stem}.py")
    for key, stem in {
        "overview": "overview",
        "explorer": "explorer",
        "latent": "latent",
        "distributions": "distributions",
        "categories": "category_map",
        "side_effects": "side_effects",
        "triage": "triage",
        "prompt_lab": "prompt_lab",
    }.items()
}
# What fills each stage; the pipeline resumes, so one command fills whatever is missing.
STAGE_HINT = {
    "collect": "paired activations",
    "train": "the cross-coder",
    "diff": "decoder norms, β and attribution labels",
    "contexts": "top-activating contexts and histograms",
    "interpret": "descriptions and their scores",
    "categories": "categories and the UMAP",
    "evaluate": "benchmark comparison and side-effect metrics",
}


# --------------------------------------------------------------------------- which runs


def run_roots() -> list[Path]:
    """Folders to look for runs in: CLI args after ``--``, then $MNEME_RUNS, then defaults."""
    roots = [Path(a) for a in sys.argv[1:] if not a.startswith("-") and Path(a).is_dir()]
    roots += [Path(p) for p in os.environ.get("MNEME_RUNS", "").split(os.pathsep) if p]
    roots += [p for p in DEFAULT_ROOTS if p.is_dir()]
    return list(dict.fromkeys(p.expanduser().resolve() for p in roots))


@st.cache_data(ttl=10, show_spinner=False)
def discover_runs(roots: tuple[str, ...]) -> dict[str, str]:
    """Runs under the roots (a root may itself be a run), name -> path, two levels deep."""
    found: dict[str, str] = {}
    for root in map(Path, roots):
        candidates = (
            [root] + sorted(p for p in root.glob("*") if p.is_dir()) + sorted(p for p in root.glob("*/*") if p.is_dir())
        )
        for path in candidates:
            if (path / MANIFEST).is_file():
                found.setdefault(_run_label(path), str(path))
    return found


def _run_label(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def resolve_run(runs: dict[str, str], wanted: str) -> str:
    """The folder a ``?run=`` value names: a label this server lists, else a path, else the
    one listed run whose folder has that name. Labels are paths relative to where the
    server started, so a link made on another machine (``?run=rmu-strong``, or its path
    there) still opens the run of that name here."""
    if wanted in runs or Path(wanted).is_dir():
        return runs.get(wanted, wanted)
    named = _named_like(runs, wanted)
    return next(iter(named.values())) if len(named) == 1 else wanted


def _named_like(runs: dict[str, str], wanted: str) -> dict[str, str]:
    """The listed runs (label -> path) whose folder has the name ``wanted`` ends in."""
    return {label: path for label, path in runs.items() if Path(path).name == Path(wanted).name}


def ambiguity(runs: dict[str, str], wanted: str) -> str | None:
    """Why a ``?run=`` value that names no folder opened nothing, where the reason is that
    several listed runs share its folder name (a link by name cannot tell them apart)."""
    named = {} if Path(wanted).is_dir() else _named_like(runs, wanted)
    if len(named) < 2:
        return None
    return f"?run={wanted} names {len(named)} listed runs ({', '.join(named)}); pick one in the sidebar"


def selected_run_path() -> str | None:
    """The run named in the URL (``?run=``), else this session's, else the first found.

    The choice is written back to the URL so every page's address can be shared.
    """
    runs = discover_runs(tuple(map(str, run_roots())))
    wanted = st.query_params.get("run") or st.session_state.get("run")
    path = resolve_run(runs, wanted) if wanted else next(iter(runs.values()), None)
    if path is None:
        return None
    # a link resolved by the run's folder name gets this server's own label in the URL
    st.session_state["run"] = wanted if wanted and (wanted in runs or path == wanted) else _run_label(Path(path))
    if st.query_params.get("run") != st.session_state["run"]:
        st.query_params["run"] = st.session_state["run"]
    return path


def keep_filters() -> None:
    """Keep explorer filters when the user visits another page and comes back.

    Streamlit drops a widget's state on a run where it is not drawn; writing the
    values back under the same keys makes them plain session state that survives.
    """
    for key in [k for k in st.session_state if str(k).startswith("f_")]:
        st.session_state[key] = st.session_state[key]


def fit_range(key: str, lo: float, hi: float, seed: tuple[float, float] | None = None) -> None:
    """Seed a range slider's state, or reset it when it no longer fits the bounds.

    Filters persist across pages and reruns; a re-run stage (or another run) can move a
    column's bounds, and a remembered value outside them would make the slider raise.
    """
    value = st.session_state.get(key)
    if not (isinstance(value, (tuple, list)) and len(value) == 2 and lo <= value[0] <= value[1] <= hi):
        st.session_state[key] = seed if seed is not None else (lo, hi)


def fit_value(key: str, lo: float, hi: float, seed: float) -> None:
    """The one-value version of :func:`fit_range`."""
    value = st.session_state.get(key)
    if not (isinstance(value, (int, float)) and lo <= value <= hi):
        st.session_state[key] = seed


def fit_choices(key: str, options: Sequence[object], seed: object | None = None, multi: bool = True) -> None:
    """Drop remembered choices the widget no longer offers (same reason as :func:`fit_range`)."""
    value = st.session_state.get(key)
    if multi:
        if isinstance(value, list):
            st.session_state[key] = [v for v in value if v in options]
    elif value not in options:
        st.session_state[key] = seed


def url_choice(key: str, param: str, options: list[str], default: str) -> None:
    """Seed a one-choice filter from the URL (``?param=``), so a shared link opens the same view.

    The URL wins only when this session has no value yet (a link opened afresh); after that
    the widget's own state (kept across pages by :func:`keep_filters`) is the truth, and
    :func:`to_url` writes it back so the address always says what the page shows.
    """
    wanted = st.query_params.get(param)
    if key not in st.session_state and wanted in options:
        st.session_state[key] = wanted
    fit_choices(key, list(options), seed=default, multi=False)


def to_url(param: str, value: object) -> None:
    """Write a filter's value into the URL (the pair of :func:`url_choice`)."""
    if st.query_params.get(param) != str(value):
        st.query_params[param] = str(value)


def run_picker() -> None:
    """Sidebar: pick one of the runs found, or type a folder."""
    runs = discover_runs(tuple(map(str, run_roots())))
    current = st.session_state.get("run")
    options = list(runs) + ([current] if current and current not in runs else [])
    with st.sidebar:
        st.markdown("### MNEME")
        if options:
            idx = options.index(current) if current in options else 0
            choice = st.selectbox(
                "Run",
                options,
                index=idx,
                key="run_picker",
                help="Runs found under " + ", ".join(map(str, run_roots())) + " (set MNEME_RUNS or pass a folder)",
            )
            if choice is not None and choice != current:
                _switch_run(choice)
        other = st.text_input("Open another run folder", key="run_other", placeholder="/path/to/run")
        if other and other != current:
            _switch_run(other)


def _switch_run(run: str) -> None:
    st.session_state["run"] = run
    for key in [k for k in st.session_state if str(k).startswith("f_")] + ["explorer_order"]:
        st.session_state.pop(key, None)  # filters belong to the run they were set on
    st.query_params.clear()
    st.query_params["run"] = run
    st.rerun()


# --------------------------------------------------------------------------- open + cache


def _mtime(path: str) -> float:
    try:
        return (Path(path) / MANIFEST).stat().st_mtime
    except OSError:
        return 0.0


@st.cache_resource(max_entries=8, show_spinner=False)
def _open(path: str, mtime: float) -> Run:
    run = open_run(path)
    run.latents  # noqa: B018 - load once per run version, shared by every session
    return run


def open_cached(path: str) -> Run:
    """Open any run through the shared cache (for overlays of other runs)."""
    return _open(path, _mtime(path))


def same_base_model(a: str, b: str) -> bool:
    """Whether two runs diff the same base model at the same layer (so overlays compare)."""
    try:
        ma, mb = (open_cached(p).manifest for p in (a, b))
    except Exception:
        return False
    base = lambda m: (m.get("models", {}).get("base"), m.get("layer"))  # noqa: E731
    return base(ma) == base(mb)


@st.cache_data(max_entries=32, show_spinner=False)
def cached_figure(kind: str, path: str, mtime: float, *args: Any) -> Any:
    """Figures over the whole latents table (the expensive ones), per run version."""
    from mneme_core.views import plots

    builder = {"beta_scatter": plots.beta_scatter, "category_map": plots.category_map}[kind]
    return builder(_open(path, mtime).latents, *args)


def setup() -> Any:
    """Page config, navigation, the run in the URL and the run picker; returns the page to run."""
    st.set_page_config(page_title="MNEME", page_icon=":material/compare_arrows:", layout="wide")
    sections = {
        "Study": [("overview", "Overview", "dashboard"), ("side_effects", "Side effects", "warning")],
        "Latents": [
            ("explorer", "Latent explorer", "table_rows"),
            ("latent", "Latent", "neurology"),
            ("distributions", "Diff distributions", "bar_chart"),
            ("categories", "Category map", "scatter_plot"),
        ],
        "Audit": [("triage", "Triage", "fact_check"), ("prompt_lab", "Prompt lab", "science")],
    }
    pages = {
        section: [
            st.Page(
                PAGE_FILES[key],
                title=title,
                icon=f":material/{icon}:",
                # the default page is served at "/" only; its own url_path is reserved, never routed
                url_path="home" if key == "overview" else Path(PAGE_FILES[key]).stem,
                default=key == "overview",
            )
            for key, title, icon in items
        ]
        for section, items in sections.items()
    }
    # "/overview?run=..." (typed, or a link made by hand) would get "Page not found": a hidden
    # second entry serves the same script there. It comes after the default, so page links
    # to the overview still point at "/".
    pages["Study"].append(st.Page(PAGE_FILES["overview"], title="Overview", url_path="overview", visibility="hidden"))
    page = st.navigation(pages)
    keep_filters()
    selected_run_path()
    run_picker()
    return page


def _ensure_setup() -> None:
    """Give a page started without app.py its sidebar and run picker.

    Streamlit starts in its legacy mode when a ``pages/`` folder exists: until app.py
    has called ``st.navigation`` once in the process, a first request for
    ``/latent?...`` runs ``pages/latent.py`` alone. app.py's ``st.navigation`` call
    clears the flag checked here, so this runs only in that case (and in AppTest, which
    resets the flag on every run). No rerun: that would drop a clicked button's value.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # pragma: no cover - depends on the Streamlit version
        return
    if PagesManager.uses_pages_directory:
        setup()


def current_run() -> Run:
    """The open run, or an error page (no stack trace) and stop."""
    _ensure_setup()
    path = selected_run_path()
    if path is None:
        st.title("No run to show")
        st.info(
            "No MNEME run was found. Build one with `mneme run STUDY.yaml` (see `examples/`), then start the "
            "dashboard with `mneme dashboard runs` or `mneme dashboard runs/NAME`."
        )
        st.stop()
    try:
        return _open(path, _mtime(path))
    except RunError as exc:
        error_page(ambiguity(discover_runs(tuple(map(str, run_roots()))), path) or str(exc))
    except Exception as exc:  # a damaged table: say which and where, not a traceback
        error_page(f"{path} could not be read: {type(exc).__name__}: {exc}")
    raise AssertionError("unreachable")


def error_page(message: str) -> None:
    st.title("This run cannot be opened")
    st.error(render.escape_markdown(message), icon=":material/error:")  # the message quotes the URL's ?run=
    st.caption("Pick another run in the sidebar, or fix the folder and reload.")
    st.stop()


def run_key(run: Run) -> tuple[str, float]:
    return str(run.path), _mtime(str(run.path))


def stage_command(run: Run, stage: str) -> str:
    """The `mneme` command that fills ``stage`` of this run."""
    config = run.path / "config.yaml"
    if stage == "evaluate":
        return f"mneme evaluate {run.path} --benchmark FILE"
    if stage == "interpret":
        return f"mneme interpret {run.path}"
    return f"mneme {stage} {config}"


def missing_message(run: Run, *stages: str, what: str = "") -> str | None:
    """What to run when ``stages`` are not complete, or None when they are."""
    missing = [s for s in stages if run.stage_status(s) != "complete"]
    if not missing:
        return None
    done = ", ".join(s for s in STAGES if run.stage_status(s) == "complete") or "no complete stages"
    commands = "\n".join(f"- `{stage_command(run, s)}`" for s in missing)
    return (
        f"{what or 'This page'} needs the **{', '.join(missing)}** stage{'s' if len(missing) > 1 else ''} "
        f"({'; '.join(STAGE_HINT[s] for s in missing)}). This run has: {done}.\n\n"
        f"Fill it with `mneme run {run.path / 'config.yaml'}` (resumes and runs only what is missing), or:\n{commands}"
    )


def require(run: Run, *stages: str, what: str = "") -> None:
    """Empty state: stop the page, naming the missing stages and the command that fills them."""
    message = missing_message(run, *stages, what=what)
    if message:
        st.info(message, icon=":material/hourglass_empty:")
        st.stop()


def note_missing(run: Run, *stages: str, what: str = "") -> bool:
    """Like :func:`require` for one section of a page: say what is missing, keep going."""
    message = missing_message(run, *stages, what=what)
    if message:
        st.info(message, icon=":material/hourglass_empty:")
    return message is None


@st.cache_resource(max_entries=16, show_spinner=False)
def _lookup(path: str, mtime: float, table: str) -> Any:
    from mneme_core.common.lookup import LatentLookup

    file = Path(path) / f"{table}.parquet"
    return LatentLookup(file) if file.is_file() else None


@st.cache_data(max_entries=256, show_spinner=False)
def contexts(path: str, mtime: float, latent: int) -> pd.DataFrame:
    """One latent's contexts (row-group pruned read; see mneme_core.common.lookup)."""
    from mneme_core.common.lookup import order_contexts

    lookup = _lookup(path, mtime, "contexts")
    return order_contexts(lookup.frame(latent)) if lookup is not None else pd.DataFrame()


@st.cache_data(max_entries=256, show_spinner=False)
def topics(path: str, mtime: float, latent: int) -> pd.DataFrame:
    """One latent's share of activation per topic (``mneme_core.analysis.topics``)."""
    lookup = _lookup(path, mtime, "latent_topics")
    return lookup.frame(latent) if lookup is not None else pd.DataFrame()


@st.cache_data(max_entries=256, show_spinner=False)
def histogram(path: str, mtime: float, latent: int) -> pd.DataFrame:
    lookup = _lookup(path, mtime, "histograms")
    return lookup.frame(latent) if lookup is not None else pd.DataFrame()


@st.cache_data(max_entries=8, show_spinner=False)
def filter_choices(path: str, mtime: float) -> tuple[dict[str, list[str]], dict[str, tuple[float, float]]]:
    """Label values and numeric bounds of a run's latents (fixed per run version)."""
    from mneme_core.views import explore

    latents = _open(path, mtime).latents
    return explore.label_options(latents), explore.range_bounds(latents)


@st.cache_data(max_entries=16, show_spinner=False)
def per_category(path: str, mtime: float, direction: str = "degraded") -> pd.DataFrame:
    from mneme_core.evaluation.evaluate import per_category_table

    return per_category_table(_open(path, mtime), direction)


@st.cache_resource(max_entries=4, show_spinner=False)
def decoder_rows(path: str, mtime: float) -> Any:
    from mneme_core.views.explore import decoder_rows as load

    return load(path)


def link_to(page: str, label: str, run: Run | None = None, icon: str | None = None, **params: Any) -> None:
    """A page link that keeps the run (and any other params) in the URL."""
    qp = {"run": st.session_state.get("run", str(run.path) if run else "")} | {k: str(v) for k, v in params.items()}
    st.page_link(PAGE_FILES[page], label=label, icon=icon, query_params=qp)


def open_latent(latent: int) -> None:
    """Go to a latent's page (from a table selection or a chart click)."""
    st.switch_page(
        PAGE_FILES["latent"], query_params={"run": st.session_state.get("run", ""), "latent": str(int(latent))}
    )


def clicked_latent(event: Any) -> int | None:
    """The latent id of a clicked / selected plotly point (customdata[0]), if any."""
    points = (getattr(event, "selection", None) or {}).get("points", []) if event else []
    for p in points:
        data = p.get("customdata")
        if data is not None:
            return int(data[0] if isinstance(data, (list, tuple)) else data)
    return None
